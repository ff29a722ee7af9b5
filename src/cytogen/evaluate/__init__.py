"""cytogen.evaluate"""
