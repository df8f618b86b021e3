"""fewsam_jax: few-shot Segment Anything for anatomical segmentation, in JAX/Flax NNX."""
