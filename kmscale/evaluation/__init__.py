"""kmscale.evaluation"""
