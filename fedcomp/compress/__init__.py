"""The compression core: the spec and scheme registry, the pipeline, quantizers and sparsifiers
(`quant`), entropy coders and the wire format (`codec`). No Flower.
"""
