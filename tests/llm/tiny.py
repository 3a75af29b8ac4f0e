"""Tiny Hugging Face models and tokenizers built from configs (no download), shared by the LLM and CLI tests."""
import random

import torch
import transformers


def tiny_llama(seed: int = 0, layers: int = 2) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(63)}
    vocab["[UNK]"] = 63
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def tiny_texts(docs: int = 10, words: int = 300, seed: int = 0) -> list[str]:
    """Documents of the tiny tokenizer's words with some structure (a repeating motif plus noise)."""
    rng = random.Random(seed)
    return [" ".join(f"w{(3 * i + rng.randrange(4)) % 63}" for i in range(words)) for _ in range(docs)]


def save_tiny_model(path, seed: int = 0):
    model, tok = tiny_llama(seed), tiny_tokenizer()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
