"""Files: reading layers and networks from checkpoints, and the on-disk result store of a sweep.

checkpoints: one bilinear layer, its readout or a whole image model from safetensors or
torch.save files (torch.load with weights_only=True only). store: a sweep's directory, its
manifest and its checksummed safetensors shards, and `open_results` to read it back.

May import: the core modules at the top of the package (layer, result, _arrays) and network/.
sweep/ and the command line import from here, never the other way.
"""
