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


# Tiny Mixture-of-Experts models of the seven architectures issue 18 names (transformers 5.x fused experts).
_MOE_COMMON = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=128)


def _moe_configs():
    T, c = transformers, _MOE_COMMON
    return {
        "mixtral": (T.MixtralForCausalLM, lambda: T.MixtralConfig(
            **c, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)),
        "qwen2_moe": (T.Qwen2MoeForCausalLM, lambda: T.Qwen2MoeConfig(
            **c, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=4,
            num_experts_per_tok=2)),
        "qwen3_moe": (T.Qwen3MoeForCausalLM, lambda: T.Qwen3MoeConfig(
            **c, intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, head_dim=8)),
        "olmoe": (T.OlmoeForCausalLM, lambda: T.OlmoeConfig(
            **c, intermediate_size=64, num_experts=4, num_experts_per_tok=2, eos_token_id=None, pad_token_id=None)),
        "deepseek_v3": (T.DeepseekV3ForCausalLM, lambda: T.DeepseekV3Config(
            **{**c, "num_key_value_heads": 4}, intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4,
            num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1,
            q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)),
        "gpt_oss": (T.GptOssForCausalLM, lambda: T.GptOssConfig(
            **c, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, head_dim=8, sliding_window=16,
            layer_types=["sliding_attention", "full_attention"])),
        "llama4": (T.Llama4ForCausalLM, lambda: T.Llama4TextConfig(
            **c, intermediate_size=64, intermediate_size_mlp=64, num_local_experts=4, num_experts_per_tok=1,
            head_dim=8, interleave_moe_layer_step=1)),
    }


MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss", "llama4")


def tiny_moe(arch: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A 2-block model of ``arch`` (one of `MOE_ARCHS`) with 4 experts of hidden size 32, in eval mode. The
    weights are drawn with std 0.2 (HF's 0.02 init makes a random tiny model's routing and pruning trivial)."""
    cls, config = _moe_configs()[arch]
    torch.manual_seed(seed)
    model = cls(config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()
