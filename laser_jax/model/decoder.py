"""The decoder LLM: token or embedding inputs, a functional KV cache, optional logits.

Axis letters: B batch, T new positions, S key slots (cache length), D hidden, V vocab,
L layers, K kv heads, H head dim.

Layers are always stacked on a leading L axis (one parameter layout for import, export,
LoRA and sharding); `scan_layers=False` unrolls the loop instead of scanning it.
The backbone knows nothing about retrieval: a soft token is just an `x_BTD` input. With
`cfg.soft_token == "pause"` it also holds one learned input vector, `latent/pause_embedding`
[D] (its own variable collection, so that it trains under LoRA too), which the latent view
feeds at its soft steps (`Decoder.pause_embedding`).
"""
from __future__ import annotations

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from laser_jax.model.attention import Attention
from laser_jax.model.config import ModelConfig
from laser_jax.model.layers import LORA, Proj, RMSNorm, dtype_of
from laser_jax.model.partitioning import constrain_batch_split

LATENT = "latent"  # variable collection of the latent view's own inputs (cfg.soft_token == "pause")
PAUSE = "pause_embedding"  # latent/pause_embedding [D]: the vector every soft step is fed

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_proj": jax.checkpoint_policies.save_only_these_names("query", "key", "value", "attention"),
}


@flax.struct.dataclass
class DecoderOutput:
    """hidden: [B, T, D] after the final norm; cache: {"k","v"}: [L, B, S, K, H] (the
    new keys/values [L, B, T, K, H] when called without a cache; the updated tail alone
    when called with a prefix cache); logits: [B, T', V] float32 or None."""

    hidden: jax.Array
    cache: dict
    logits: Optional[jax.Array] = None


class MLP(nn.Module):
    """SiLU-gated feed-forward: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD):
        cfg = self.cfg

        def proj(name, features, axes):
            return Proj(features, axes, cfg, lora=bool(cfg.lora_rank) and name in cfg.lora_targets,
                        name=name)

        gate = proj("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x_BTD)
        up = proj("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x_BTD)
        return proj("down_proj", cfg.hidden_size, ("mlp", "embed"))(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)). Scan-compatible signature.

    The input and output residual streams are constrained to stay split over the batch
    under a sharding context (`partitioning.constrain_batch_split`; a no-op without one).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, layer_cache, positions_BT, kv_mask_BS, cache_index, segment_ids_BT=None):
        cfg, pdt = self.cfg, dtype_of(self.cfg.param_dtype)
        x_BTD = constrain_batch_split(x_BTD)
        h = RMSNorm(cfg.rms_norm_eps, pdt, "embed", name="input_layernorm")(x_BTD)
        attn, new_cache = Attention(cfg, name="self_attn")(h, positions_BT, kv_mask_BS, layer_cache,
                                                           cache_index, segment_ids_BT)
        x_BTD = x_BTD + attn
        h = RMSNorm(cfg.rms_norm_eps, pdt, "embed", name="post_attention_layernorm")(x_BTD)
        x_BTD = x_BTD + MLP(cfg, name="mlp")(h)
        return constrain_batch_split(x_BTD), new_cache


def _layer_stack(cfg: ModelConfig):
    layer = DecoderLayer
    if cfg.remat_policy != "none":
        layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    return nn.scan(
        layer,
        variable_axes={"params": 0, LORA: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_hidden_layers,
        unroll=1 if cfg.scan_layers else cfg.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class Embedder(nn.Module):
    """Token embedding table [V, D] (HF `embed_tokens`)."""

    cfg: ModelConfig

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.cfg.vocab_size, self.cfg.hidden_size), dtype_of(self.cfg.param_dtype))

    def __call__(self, tokens_BT):
        return jnp.take(self.embedding, tokens_BT, axis=0).astype(dtype_of(self.cfg.compute_dtype))


class Decoder(nn.Module):
    """Qwen3 / Qwen2 / Llama 3 decoder LLM (one code path, chosen by `cfg`).

    Methods (use with `apply(..., method=...)`): `__call__`, `embed`, `logits`,
    `embedding_table`. LoRA dropout is active only when a "dropout" rng is passed.
    """

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = Embedder(cfg)
        self.layers = _layer_stack(cfg)(cfg)
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype_of(cfg.param_dtype), "embed")
        if not cfg.tie_word_embeddings:
            self.lm_head = Proj(cfg.vocab_size, ("embed", "vocab"), cfg)
        if cfg.soft_token == "pause":
            self.pause = self.variable(LATENT, PAUSE, lambda: nn.LogicallyPartitioned(
                mean_embedding(self.embed_tokens.embedding, cfg), ("embed",)))

    def embed(self, tokens_BT):
        """Input embeddings [B, T, D] in the compute dtype."""
        return self.embed_tokens(tokens_BT)

    def embedding_table(self):
        """The input embedding matrix E [V, D] in the compute dtype."""
        return self.embed_tokens.embedding.astype(dtype_of(self.cfg.compute_dtype))

    def pause_embedding(self):
        """The learned pause input [D] in the compute dtype (only with soft_token "pause")."""
        if self.cfg.soft_token != "pause":
            raise ValueError(f"soft_token={self.cfg.soft_token!r}: the model has no pause embedding")
        return nn.unbox(self.pause.value).astype(dtype_of(self.cfg.compute_dtype))

    def logits(self, hidden_BTD):
        """LM-head logits [B, T, V] in float32 (W_lm tied to E when the config says so)."""
        cdt = dtype_of(self.cfg.compute_dtype)
        if self.cfg.tie_word_embeddings:
            return jnp.einsum("btd,vd->btv", hidden_BTD.astype(cdt), self.embedding_table(),
                              preferred_element_type=jnp.float32)
        return self.lm_head(hidden_BTD).astype(jnp.float32)

    def __call__(self, tokens_BT=None, *, x_BTD=None, positions_BT, kv_mask_BS, cache=None,
                 cache_index=None, logits: str = "none", segment_ids_BT=None) -> DecoderOutput:
        """Run the stack.

        Args:
          tokens_BT: int token ids, or None when `x_BTD` is given.
          x_BTD: input embeddings (e.g. soft tokens), used instead of `tokens_BT`.
          positions_BT: int RoPE positions of the T inputs.
          kv_mask_BS: 1 for valid key slots. Without a cache S == T (the inputs' mask);
            with a cache S is the cache length (slots not yet written may be 1: causality
            in slot order hides them); with a prefix cache P + S (prefix slots first).
          cache: None, {"k","v"}: [L, B, S, K, H] (see `init_cache`), or a prefix cache:
            those plus {"prefix_k","prefix_v"}: [L, B, P, K, H], a fixed prefix attended
            without being copied into the cache (see `attention.prefix_tail_attention`).
          cache_index: int slot where the T new keys/values are written (with a cache;
            counted within "k"/"v", i.e. within the tail of a prefix cache).
          logits: "none", "last" (last position only, [B, 1, V]) or "all".
          segment_ids_BT: packed rows (no cache): each input's document id (0 = padding);
            a token attends only to its own document's tokens (`attention.segment_mask`).
            `positions_BT` then restart at 0 for each document (`positions_from_segments`).

        Returns:
          DecoderOutput(hidden [B, T, D] after the final norm, cache, logits).
        """
        if (tokens_BT is None) == (x_BTD is None):
            raise ValueError("pass exactly one of tokens_BT and x_BTD")
        x = self.embed(tokens_BT) if x_BTD is None else x_BTD.astype(dtype_of(self.cfg.compute_dtype))
        if cache is not None and cache_index is None:
            raise ValueError("cache_index is required with a cache")
        x, new_cache = self.layers(x, cache, positions_BT, kv_mask_BS, cache_index, segment_ids_BT)
        hidden = self.norm(x)
        out_logits = None
        if logits == "last":
            out_logits = self.logits(hidden[:, -1:])
        elif logits == "all":
            out_logits = self.logits(hidden)
        elif logits != "none":
            raise ValueError(f"logits must be 'none', 'last' or 'all', got {logits!r}")
        return DecoderOutput(hidden=hidden, cache=new_cache, logits=out_logits)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
    """Zero KV cache {"k","v"}: [L, B, S, K, H] in the compute dtype (or `dtype`)."""
    shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
    dtype = dtype or dtype_of(cfg.compute_dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def positions_from_mask(mask_BT):
    """RoPE positions of a left-padded batch: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(mask_BT, axis=-1) - 1, 0).astype(jnp.int32)


def mean_embedding(table_VD, cfg: ModelConfig):
    """The initial pause vector: the mean row of the input embedding table [D] (float32 mean,
    stored in the param dtype). It is the paper's soft token under a uniform LM-head
    distribution, i.e. what a step would be fed knowing nothing about the input, so the pause
    control starts inside the family of inputs it replaces; it needs no seed, and from a
    pretrained model it lies among real token embeddings."""
    return jnp.mean(nn.unbox(table_VD).astype(jnp.float32), axis=0).astype(dtype_of(cfg.param_dtype))


def positions_from_segments(segment_ids_BT):
    """RoPE positions of packed rows: 0 at the first token of each document (a run of equal
    segment ids), counting up inside it (padding gets its run's count too; it is masked)."""
    T = segment_ids_BT.shape[1]
    t_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), segment_ids_BT.shape)
    starts_BT = jnp.concatenate([jnp.ones_like(segment_ids_BT[:, :1], dtype=bool),
                                 segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
    return t_BT - jax.lax.cummax(jnp.where(starts_BT, t_BT, 0), axis=1)


def abstract_variables(cfg: ModelConfig) -> dict:
    """Shapes and dtypes of the variables (`params`, `lora` when lora_rank > 0, `latent` with
    soft_token "pause"),
    without allocating them (partitioning boxes removed)."""
    return nn.unbox(jax.eval_shape(lambda: init_variables(cfg, jax.random.key(0), boxed=True)))


def init_variables(cfg: ModelConfig, rng, boxed: bool = False) -> dict:
    """Random initial variables; with `boxed` the leaves keep their logical partitioning."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    ones = jnp.ones((1, 1), jnp.int32)
    variables = Decoder(cfg).init({"params": rng}, tokens, positions_BT=ones * 0, kv_mask_BS=ones,
                                 logits="last")
    return variables if boxed else nn.unbox(variables)
