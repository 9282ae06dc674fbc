"""
imgrelay's test suite: python -m twisted.trial tests
"""
