"""Adapters: what users hold (torch modules, models, SAEs, batches of data) turned into what the
engine takes, and results read back against real inputs.

module_adapters reads W, V, P and the biases out of transformers, TransformerLens, published and
autoencoder modules (used by BilinearLayer.from_module and BilinearNetwork); model_directions
builds output directions and input bases from unembeddings, SAEs and autoencoders; collect
gathers what a module receives inside a model; data_analysis gives eigenvector activations,
top-activating inputs and truncation curves of a result on data.

May import: the small core modules at the top of the package (result, memory, _arrays) only, so
that the core's layer and network/ can read modules through here without a cycle.
"""
