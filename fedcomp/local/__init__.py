"""What a client does to its model: training, quantization-aware training, relevances, filter scales
and partial updates. No Flower.
"""
