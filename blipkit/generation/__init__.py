"""Generation: greedy, sampling and beam search over a cached decoder, with composable logits processors."""
