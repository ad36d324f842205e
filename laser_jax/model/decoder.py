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
from laser_jax.model.layers import LORA, Proj, RMSNorm, dtype_of, with_lora
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
        axes = {"gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"), "down_proj": ("mlp", "embed")}
        gate_up = with_lora(cfg, x_BTD, {name: Proj(cfg.intermediate_size, axes[name], cfg, name=name)(x_BTD)
                                         for name in ("gate_proj", "up_proj")}, axes)
        h = nn.silu(gate_up["gate_proj"]) * gate_up["up_proj"]
        return with_lora(cfg, h, {"down_proj": Proj(cfg.hidden_size, axes["down_proj"], cfg, name="down_proj")(h)},
                         axes)["down_proj"]


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


def _layer_class(cfg: ModelConfig, scanned: bool):
    """DecoderLayer, under the config's remat policy."""
    if cfg.remat_policy == "none":
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not scanned)


def _layer_stack(cfg: ModelConfig):
    return nn.scan(
        _layer_class(cfg, cfg.scan_layers),
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


# Rows of soft states below which `Decoder.expected_embedding` puts the vocabulary axis first.
VOCAB_LEADS_BELOW = 24


class Decoder(nn.Module):
    """Qwen3 / Qwen2 / Llama 3 decoder LLM (one code path, chosen by `cfg`).

    Methods (use with `apply(..., method=...)`): `__call__`, `embed`, `logits`,
    `expected_embedding`, `final_norm`, `embedding_table`. LoRA dropout is active only when a "dropout" rng is passed.
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

    def expected_embedding(self, hidden_BD):
        """softmax(W_lm h) @ E for single states [B, D]: the LM head's distribution over the
        vocabulary (float32 logits and softmax) and the expected input embedding under it,
        [B, D] in the compute dtype. With tied embeddings the vocabulary axis leads both
        matmuls ([V, D] @ [D, B], then [B, V]-transposed @ [V, D]) for fewer than
        VOCAB_LEADS_BELOW rows: the table is read in its stored layout and the [V, B]
        probabilities never need a transposed copy (on a CPU faster than the [B, V] orientation
        up to B = 16, slower from B = 32: 32768 x 256 table, bench/NOTES.md 2026-12-08), so
        wider batches take the [B, V] orientation."""
        cdt = dtype_of(self.cfg.compute_dtype)
        table_VD = self.embedding_table()
        h_BD = hidden_BD.astype(cdt)
        if self.cfg.tie_word_embeddings and h_BD.shape[0] < VOCAB_LEADS_BELOW:
            logits_VB = jnp.einsum("vd,bd->vb", table_VD, h_BD, preferred_element_type=jnp.float32)
            p_VB = jax.nn.softmax(logits_VB, axis=0)
            return jnp.einsum("vb,vd->bd", p_VB.astype(cdt), table_VD, preferred_element_type=jnp.float32).astype(cdt)
        p_BV = jax.nn.softmax(self.logits(h_BD[:, None])[:, 0], axis=-1)
        return jnp.einsum("bv,vd->bd", p_BV.astype(cdt), table_VD, preferred_element_type=jnp.float32).astype(cdt)

    def final_norm(self, x_BTD):
        """The norm after the last layer (what `__call__` returns as `hidden`)."""
        return self.norm(x_BTD)

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


def cached_stack(model: Decoder, variables: dict, cache: dict):
    """(initial cache, run): run(cache, x_BTD, positions_BT, kv_mask_BS, cache_index, rngs=None)
    -> (hidden [B, T, D] after the final norm, updated cache) puts T new embedded positions
    through the layer stack against `cache`, as `model.apply(variables, x_BTD=..., cache=...)`
    does. Built once (e.g. before LaSER's soft-token scan), called per step.

    `cache` is a prefix cache without its tail: {"prefix_k", "prefix_v": [L, B, P, K, H]} plus
    {"k", "v": [L, B, S, K, H]} (the tail, returned updated by `run`). With
    `model.cfg.unroll_soft_steps` the layer loop is unrolled over per-layer variables and caches
    sliced HERE, once: each step then reads every layer's weights and prefix where they lie,
    instead of copying a slice of the stacked arrays per layer per step as a scanned (or an
    unrolled nn.scan) layer loop does; the tail is a tuple of per-layer {"k", "v"}.
    """
    cfg = model.cfg
    if not cfg.unroll_soft_steps:
        def run_scanned(tail, x_BTD, positions_BT, kv_mask_BS, cache_index, rngs=None):
            out = model.apply(variables, x_BTD=x_BTD, positions_BT=positions_BT, kv_mask_BS=kv_mask_BS,
                              cache={**cache, **tail}, cache_index=cache_index, rngs=rngs)
            return out.hidden, out.cache

        return {"k": cache["k"], "v": cache["v"]}, run_scanned
    L = cfg.num_hidden_layers
    layer_variables = [jax.tree_util.tree_map(lambda a, i=i: a[i], {c: v["layers"] for c, v in variables.items()})
                       for i in range(L)]
    prefixes = [{"prefix_k": cache["prefix_k"][i], "prefix_v": cache["prefix_v"][i]} for i in range(L)]
    layer = _layer_class(cfg, scanned=False)(cfg)
    cdt = dtype_of(cfg.compute_dtype)

    def run_unrolled(tail, x_BTD, positions_BT, kv_mask_BS, cache_index, rngs=None):
        x, new_tail = x_BTD.astype(cdt), []
        for i in range(L):
            layer_rngs = None if rngs is None else {k: jax.random.fold_in(r, i) for k, r in rngs.items()}
            x, kv = layer.apply(layer_variables[i], x, {**prefixes[i], **tail[i]}, positions_BT, kv_mask_BS,
                                cache_index, rngs=layer_rngs)
            new_tail.append(kv)
        return model.apply(variables, x, method=Decoder.final_norm), tuple(new_tail)

    return tuple({"k": cache["k"][i], "v": cache["v"][i]} for i in range(L)), run_unrolled
