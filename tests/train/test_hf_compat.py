"""blipkit models work unchanged with the Hugging Face training stack: ``transformers.Trainer`` trains them, PEFT
wraps them in LoRA, and what they save afterwards loads in transformers with equal logits."""

from __future__ import annotations

import torch

import blipkit
from tests.builders.inputs import prompt_inputs, sample_inputs
from tests.builders.models import reference_blip2
from tests.builders.tolerances import close
from tests.reference import save_reference


class Examples(torch.utils.data.Dataset):
    """``count`` examples cycling through the rows of a batch: dicts of tensors, as Trainer's default collator
    stacks them."""

    def __init__(self, batch: dict[str, torch.Tensor], count: int) -> None:
        self.batch, self.count = batch, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = index % len(self.batch["input_ids"])
        return {key: value[row] for key, value in self.batch.items()}


def reference_logits(directory, inputs):
    import transformers

    reference = transformers.AutoModelForImageTextToText.from_pretrained(directory).eval()
    with torch.no_grad():
        return reference(**inputs).logits


def test_trainer_fine_tunes_a_captioner(tmp_path):
    import transformers

    save_reference("BlipForConditionalGeneration", tmp_path / "base")
    model = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "base")
    batch = sample_inputs()
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, per_device_train_batch_size=2, max_steps=6,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", activation_checkpointing=True, seed=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Examples(batch, 4))
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6
    assert losses[-1] < 0.95 * losses[0]
    assert model.is_gradient_checkpointing  # Trainer asked for it through the reference's method
    model.save_pretrained(tmp_path / "trained")
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        close(model.eval()(**inputs).logits, reference_logits(tmp_path / "trained", inputs))


def test_peft_lora_trains_merges_and_saves_a_reference_checkpoint(tmp_path):
    import peft

    reference_blip2(tmp_path / "base")
    model = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "base")
    inputs = prompt_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        before = model(**inputs).logits

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["self_attn.q", "self_attn.v"])
    wrapped = peft.get_peft_model(model, lora)
    trained = [name for name, param in wrapped.named_parameters() if param.requires_grad]
    assert trained and all(".lora_A." in name or ".lora_B." in name for name in trained)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    wrapped.train()
    losses = []
    for _ in range(4):
        loss = wrapped(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    merged = wrapped.merge_and_unload()
    assert type(merged) is blipkit.Blip2ForConditionalGeneration
    merged.eval().save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        after = merged(**inputs).logits
    assert not torch.allclose(after, before)
    close(after, reference_logits(tmp_path / "merged", inputs))
