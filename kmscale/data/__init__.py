"""kmscale.data"""
