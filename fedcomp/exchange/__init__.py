"""What the server and the client share: protocol keys, channels, update application, client state and
fault injection. The only core package that imports Flower.
"""
