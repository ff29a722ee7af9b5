"""cytogen.io"""
