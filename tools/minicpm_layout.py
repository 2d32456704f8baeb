"""The tensor layout of a MiniCPM checkpoint, shared by the fixture scripts that write tiny random
ones (make_model_fixtures.py, make_infllmv2_fixtures.py), so both name and shape the tensors the
same way the engine's loader expects."""


def minicpm_weight_shapes(vocab, H, nh, nkv, hd, I, L):
    """The tensors of a MiniCPM checkpoint (HF names, in the order the fixtures draw them)."""
    shapes = {"model.embed_tokens.weight": (vocab, H), "model.norm.weight": (H,), "lm_head.weight": (vocab, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.q_proj.weight": (nh * hd, H), p + "self_attn.k_proj.weight": (nkv * hd, H),
                       p + "self_attn.v_proj.weight": (nkv * hd, H), p + "self_attn.o_proj.weight": (H, nh * hd),
                       p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I)})
    return shapes
