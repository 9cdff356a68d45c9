"""What the tests build: tiny configs, reference models saved in the Hugging Face layout, inputs, data sets and
tolerances - shared here, so that no test module imports another."""
