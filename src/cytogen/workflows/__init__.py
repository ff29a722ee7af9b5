"""cytogen.workflows"""
