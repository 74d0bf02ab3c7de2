"""Export a trained run to Hugging Face transformers: a folder that AutoModelForCausalLM and AutoTokenizer load
offline, with the weights in safetensors, the config of a stock transformers architecture that computes what our
model computes, and a tokenizer whose ids are our vocabulary's: a character-level one, or a BPE run's own.

    python export.py --out_dir=out/cpu --output=exported/cpu
    python export.py                      # the most recently updated run under out/, into exported/<its name>

Which architecture a model maps to depends on its shape (biases and tied weights go either way):
    GPT2LMHeadModel      learned positions, layernorm, gelu or relu2 (GPT-2 itself; nanoGPT's runs too)
    GPTNeoXForCausalLM   rope, layernorm, gelu or relu2 (config/cpu.py, config/record.py)
    LlamaForCausalLM     rope, rmsnorm, swiglu
    Qwen3ForCausalLM     the same with qk_norm (and no biases)
Any other combination is refused with one line naming the option, as no stock architecture computes it exactly.
transformers, safetensors and tokenizers are needed here only: pip install -r requirements-extras.txt.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import bpe
from checkpoint import load_model
from configurator import UsageError, build_config, parse_args, refuse_positional, run_command
from files import write_folder
from sample import find_latest_run


@dataclass
class ExportConfig:
    out_dir: str = ""  # the run to export (ours or nanoGPT's); empty: the most recently updated run under out/
    output: str = ""  # the folder to write; empty: exported/<the run's folder name>


# Each stock architecture: (name, what selects it, what it then requires of the other options)
ARCHITECTURES = [
    ("gpt2", "GPT-2", dict(position_encoding="learned"), dict(norm=("layernorm",), mlp=("gelu", "relu2"),
                                                              qk_norm=(False,))),
    ("gpt_neox", "GPT-NeoX", dict(position_encoding="rope", norm="layernorm"), dict(mlp=("gelu", "relu2"),
                                                                                   qk_norm=(False,))),
    ("llama", "Llama", dict(position_encoding="rope", norm="rmsnorm", qk_norm=False), dict(mlp=("swiglu",))),
    ("qwen3", "Qwen3", dict(position_encoding="rope", norm="rmsnorm", qk_norm=True), dict(mlp=("swiglu",),
                                                                                         bias=(False,))),
]


def architecture(config: dict) -> str:
    """The stock transformers architecture that computes exactly what a model of this shape computes, or one line
    naming the option that no stock architecture has."""
    for name, label, selects, requires in ARCHITECTURES:
        if all(config[key] == value for key, value in selects.items()):
            for key, allowed in requires.items():
                if config[key] not in allowed:
                    shape = ", ".join(f"{k}={v}" for k, v in selects.items())
                    raise UsageError(f"cannot export {key}={config[key]} with {shape}: {label}, the stock architecture "
                                     f"for that, has {key} {' or '.join(map(str, allowed))}")
            return name
    raise UsageError(f"cannot export position_encoding={config['position_encoding']}: no stock transformers "
                     "architecture adds fixed sinusoids to the embeddings (learned and rope export)")


def gpt2_weights(config: dict, ours: dict) -> tuple[dict, dict]:
    """GPT2Config's settings and GPT2LMHeadModel's state dict. GPT-2 keeps biases everywhere (zeros stand in for a
    model without) and its Conv1D layers store their weights transposed."""
    settings = dict(vocab_size=config["vocab_size"], n_positions=config["block_size"], n_embd=config["n_embd"],
                    n_layer=config["n_layer"], n_head=config["n_head"], n_inner=4 * config["n_embd"],
                    activation_function=config["mlp"], layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, tie_word_embeddings=config["tie_weights"], bos_token_id=None, eos_token_id=None)

    def bias(name: str, size: int) -> torch.Tensor:
        return ours.get(name, torch.zeros(size))
    hf = {"transformer.wte.weight": ours["transformer.wte.weight"],
          "transformer.wpe.weight": ours["transformer.wpe.weight"],
          "transformer.ln_f.weight": ours["transformer.ln_f.weight"],
          "transformer.ln_f.bias": bias("transformer.ln_f.bias", config["n_embd"]),
          "lm_head.weight": ours["lm_head.weight"]}
    for i in range(config["n_layer"]):
        p = f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            hf[p + f"{norm}.weight"] = ours[p + f"{norm}.weight"]
            hf[p + f"{norm}.bias"] = bias(p + f"{norm}.bias", config["n_embd"])
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            weight = ours[p + f"{layer}.weight"]  # (out, in)
            hf[p + f"{layer}.weight"] = weight.t().contiguous()  # Conv1D: (in, out)
            hf[p + f"{layer}.bias"] = bias(p + f"{layer}.bias", weight.size(0))
    return settings, hf


def gpt_neox_weights(config: dict, ours: dict) -> tuple[dict, dict]:
    """GPTNeoXConfig's settings and state dict: sequential residuals (not parallel), rope over whole heads. GPT-NeoX
    keeps biases in its LayerNorms and MLP (zeros stand in for a model without), and its query_key_value holds each
    head's q, k and v together where our c_attn holds all heads' q, then k, then v."""
    C, nh = config["n_embd"], config["n_head"]
    settings = dict(vocab_size=config["vocab_size"], hidden_size=C, num_hidden_layers=config["n_layer"],
                    num_attention_heads=nh, intermediate_size=4 * C, hidden_act=config["mlp"],
                    max_position_embeddings=config["block_size"], layer_norm_eps=1e-5, use_parallel_residual=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
                    attention_bias=config["bias"], tie_word_embeddings=config["tie_weights"], attention_dropout=0.0,
                    hidden_dropout=0.0, bos_token_id=None, eos_token_id=None)

    def per_head(tensor: torch.Tensor) -> torch.Tensor:  # (3C, ...) as [q; k; v] -> per head [q_h; k_h; v_h]
        return tensor.view(3, nh, C // nh, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)
    hf = {"gpt_neox.embed_in.weight": ours["transformer.wte.weight"], "lm_head.weight": ours["lm_head.weight"],
          "gpt_neox.final_layer_norm.weight": ours["transformer.ln_f.weight"],
          "gpt_neox.final_layer_norm.bias": ours.get("transformer.ln_f.bias", torch.zeros(C))}
    names = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_attn": "attention.query_key_value",
             "attn.c_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
    for i in range(config["n_layer"]):
        p, q = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
        for layer, name in names.items():
            weight = ours[p + f"{layer}.weight"]
            bias = ours.get(p + f"{layer}.bias")
            if bias is None and (not layer.startswith("attn") or config["bias"]):
                bias = torch.zeros(weight.size(0))
            if layer == "attn.c_attn":
                weight, bias = per_head(weight), None if bias is None else per_head(bias)
            hf[q + f"{name}.weight"] = weight.contiguous()
            if bias is not None:
                hf[q + f"{name}.bias"] = bias.contiguous()
    return settings, hf


def llama_weights(config: dict, ours: dict, qk_norm: bool) -> tuple[dict, dict]:
    """LlamaConfig's (or Qwen3Config's) settings and state dict. Our c_attn holds q, k and v one after another, our
    swiglu c_fc the gate and then the value; RMSNorm's epsilon is float32's, as nn.RMSNorm's default."""
    C, hidden = config["n_embd"], ours["transformer.h.0.mlp.c_proj.weight"].size(1)
    settings = dict(vocab_size=config["vocab_size"], hidden_size=C, intermediate_size=hidden,
                    num_hidden_layers=config["n_layer"], num_attention_heads=config["n_head"],
                    num_key_value_heads=config["n_head"], head_dim=C // config["n_head"], hidden_act="silu",
                    max_position_embeddings=config["block_size"], rms_norm_eps=torch.finfo(torch.float32).eps,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    attention_bias=config["bias"], tie_word_embeddings=config["tie_weights"], bos_token_id=None,
                    eos_token_id=None)
    if not qk_norm:
        settings["mlp_bias"] = config["bias"]
    hf = {"model.embed_tokens.weight": ours["transformer.wte.weight"],
          "model.norm.weight": ours["transformer.ln_f.weight"], "lm_head.weight": ours["lm_head.weight"]}
    for i in range(config["n_layer"]):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        hf[q + "input_layernorm.weight"] = ours[p + "ln_1.weight"]
        hf[q + "post_attention_layernorm.weight"] = ours[p + "ln_2.weight"]
        pieces = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  "attn.c_proj": ("self_attn.o_proj",), "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
                  "mlp.c_proj": ("mlp.down_proj",)}
        for layer, names in pieces.items():
            for kind in ("weight", "bias"):
                if p + f"{layer}.{kind}" in ours:
                    for name, part in zip(names, ours[p + f"{layer}.{kind}"].chunk(len(names), dim=0)):
                        hf[q + f"{name}.{kind}"] = part.contiguous()
        if qk_norm:
            hf[q + "self_attn.q_norm.weight"] = ours[p + "attn.q_norm.weight"]
            hf[q + "self_attn.k_norm.weight"] = ours[p + "attn.k_norm.weight"]
    return settings, hf


def character_tokenizer(vocab: list[str]):
    """A tokenizers.Tokenizer that splits a text into characters and gives each our id: every character its own
    token, no special tokens, decoded by joining the characters. A character outside the vocabulary is an error, as
    in sample.py."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({char: i for i, char in enumerate(vocab)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # each char, "\n" too
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def main(argv=None):
    return run_command(export, argv, __doc__, ExportConfig)


def export(argv=None) -> Path:
    positional, options = parse_args(argv)
    refuse_positional(positional)
    cfg = build_config(ExportConfig, None, options)
    run = Path(cfg.out_dir) if cfg.out_dir else find_latest_run()
    model, vocab, info = load_model(run, "cpu")
    config = asdict(model.config)
    kind = architecture(config)
    try:
        import transformers
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise UsageError("export.py needs transformers, safetensors and tokenizers: pip install -r "
                         "requirements-extras.txt") from None
    ours = {k: v.detach().float() for k, v in model.state_dict().items()}
    settings, weights = {"gpt2": lambda: gpt2_weights(config, ours), "gpt_neox": lambda: gpt_neox_weights(config, ours),
                         "llama": lambda: llama_weights(config, ours, qk_norm=False),
                         "qwen3": lambda: llama_weights(config, ours, qk_norm=True)}[kind]()
    classes = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
               "llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}[kind]
    hf_config = getattr(transformers, classes[0])(**settings)
    hf_model = getattr(transformers, classes[1])(hf_config)
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    missing = [key for key in missing if not (config["tie_weights"] and key == "lm_head.weight")]
    assert not missing and not unexpected, f"weights left out: {missing}; weights not used: {unexpected}"
    subwords = isinstance(vocab, bpe.Vocabulary)  # a BPE run's tokenizer is a Hugging Face tokenizer already
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe.loaded(vocab.tokenizer) if subwords else
                                        character_tokenizer(vocab))
    output = write_folder(cfg.output or str(Path("exported") / run.name), lambda folder: (
        hf_model.save_pretrained(folder),  # config.json, generation_config.json, model.safetensors
        tokenizer.save_pretrained(folder)))  # a failed write leaves the folder as it was
    print(f"exported {info['path']} (iter {info['iter_num']}, val loss {info['best_val_loss']:.4f}) as "
          f"{classes[1]} with a {len(vocab)}-{'token BPE' if subwords else 'character'} tokenizer to {output}/")
    return output


if __name__ == "__main__":
    main()
