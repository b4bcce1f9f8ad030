"""Roofline arithmetic: bytes read per decode step from a model's parameters and config."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from inference.bench.roofline import BandwidthResult, decode_bytes

HIDDEN, VOCAB, LAYERS, HEADS, KV_HEADS = 32, 100, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS


def llama(tied: bool, dtype: torch.dtype = torch.bfloat16) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).to(dtype)


def test_untied_input_embedding_contributes_one_row_not_the_whole_table():
    model = llama(tied=False)
    total = sum(p.numel() for p in model.parameters())
    result = decode_bytes(model, input_len=32, output_len=64, kv_element_size=2)
    assert result.num_parameters == total
    assert result.parameter_bytes == total * 2
    assert result.weight_bytes_per_token == (total - VOCAB * HIDDEN + HIDDEN) * 2


def test_tied_embeddings_are_counted_once_as_the_lm_head_that_reads_them_fully():
    model = llama(tied=True)
    result = decode_bytes(model, input_len=32, output_len=64, kv_element_size=2)
    assert result.weight_bytes_per_token == result.parameter_bytes
    assert result.num_parameters == llama(tied=False).num_parameters() - VOCAB * HIDDEN


def test_weight_bytes_follow_the_dtype():
    bf16 = decode_bytes(llama(tied=False, dtype=torch.bfloat16), 32, 64, 2)
    fp32 = decode_bytes(llama(tied=False, dtype=torch.float32), 32, 64, 4)
    assert fp32.weight_bytes_per_token == 2 * bf16.weight_bytes_per_token


def test_kv_bytes_count_k_and_v_of_every_layer_and_kv_head_at_the_mean_context():
    result = decode_bytes(llama(tied=False), input_len=32, output_len=64, kv_element_size=2)
    assert result.kv_bytes_per_context_token == 2 * LAYERS * KV_HEADS * HEAD_DIM * 2
    # Steps attend over 33, 34, ..., 96 positions: mean 64.5.
    assert result.mean_context == pytest.approx(sum(range(33, 97)) / 64)
    assert result.kv_bytes_per_token == pytest.approx(result.kv_bytes_per_context_token * 64.5)
    assert result.total_bytes_per_token == pytest.approx(result.weight_bytes_per_token + result.kv_bytes_per_token)


def test_the_bandwidth_limit_is_the_larger_measurement_so_utilisation_is_never_flattered():
    bandwidth = BandwidthResult(1 << 29, read_gbps=13.0, copy_gbps=12.0, read_samples=[13.0], copy_samples=[12.0])
    assert bandwidth.limit_gbps == 13.0
