"""The xView3 task: SAR vessel detection (labels, synthetic scenes, dense head, loss, decoding)."""
