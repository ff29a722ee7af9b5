"""cytogen.report"""
