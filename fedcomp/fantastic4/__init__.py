"""The FantastIC4 edge emulator (DESIGN 4.9): compile a trained MLP to 4-bit integer layers,
store them in compact formats (dense, CSR, CER, CSER), run them bit-exactly, and cost them
on a calibrated model of the FPGA and ASIC implementations. No Flower imports.
"""
