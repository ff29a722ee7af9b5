"""cytogen.data"""
