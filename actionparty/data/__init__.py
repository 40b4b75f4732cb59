"""Data: Melting Pot episodes on a fixed canvas, and the LMDB datasets built from them."""
