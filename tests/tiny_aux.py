"""Tiny random-weight helper models for the safety and upsampling tests, built offline.

Real transformers classes (ViT and BERT classifiers, a GPT-2 causal LM) at tiny sizes, with
char-level tokenizers written in code. The classifier bias is the test's lever: a large
bias towards the unsafe label blocks everything, towards the safe label allows everything,
and ``shift_unsafe_bias`` moves it so a threshold falls between two given images.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _char_tokenizer(directory: Path) -> BertTokenizerFast:
    # WordPiece over single characters: a word becomes its letters ("##"-continued).
    chars = string.ascii_lowercase + string.digits
    tokens = SPECIALS + list(chars) + [f"##{c}" for c in chars]
    vocab = {token: index for index, token in enumerate(tokens)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=4096)


def make_image_checker(directory: Path, unsafe_bias: float = 0.0) -> Path:
    """A ViT NSFW classifier with labels normal/nsfw; ``unsafe_bias`` tips it to nsfw."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=16, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, num_labels=2,
        id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1},
    )  # fmt: skip
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, unsafe_bias]))
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def shift_unsafe_bias(directory: Path, delta: float) -> None:
    """Move the classifier's nsfw logit by ``delta`` (rewrites its safetensors file)."""
    path = directory / "model.safetensors"
    weights = load_file(path)
    weights["classifier.bias"] = weights["classifier.bias"] + torch.tensor([0.0, delta])
    save_file(weights, path, metadata={"format": "pt"})


def make_text_classifier(directory: Path, unsafe_bias: float) -> Path:
    """A BERT prompt classifier with labels safe/unsafe; ``unsafe_bias`` decides."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _char_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=128, num_labels=2,
        id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1},
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()  # the verdict is the bias alone: deterministic
        model.classifier.bias.copy_(torch.tensor([0.0, unsafe_bias]))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_tiny_lm(directory: Path, favourite: str = "z") -> Path:
    """A GPT-2 causal LM whose greedy answer is the letter ``favourite``, repeated."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _char_tokenizer(directory)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=2048, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # The last layer norm outputs one constant vector, and the (tied) output embedding
        # of ``favourite`` points along it with a large norm: greedy picks it every time.
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.nn.functional.one_hot(torch.tensor(0), 16))
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[tokenizer.convert_tokens_to_ids(favourite), 0] = 10.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
