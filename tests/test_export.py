"""export.py: each supported shape loads in transformers, offline, and computes what our model computes; the
tokenizer's ids are our vocabulary's; a shape no stock architecture computes is refused with its line."""

import pytest
import torch

import export
import sample
import train
from checkpoint import load_model
from conftest import tiny_train_args
from data import encode

transformers = pytest.importorskip("transformers")  # installed by .ci/run from requirements-extras.txt

SHAPES = {
    "gpt2": dict(),
    "gpt2-relu2-bias-untied": dict(mlp="relu2", bias=True, tie_weights=False),
    "gpt_neox": dict(position_encoding="rope"),  # config/cpu.py's shape: rope, layernorm, gelu
    "gpt_neox-relu2-bias-untied": dict(position_encoding="rope", mlp="relu2", bias=True, tie_weights=False),
    "llama": dict(position_encoding="rope", norm="rmsnorm", mlp="swiglu"),
    "llama-bias-untied": dict(position_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=True, tie_weights=False),
    "qwen3": dict(position_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True),
}
EXPECTED_CLASS = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """A short run of each shape: trained a little, so its weights are no longer their symmetric initial ones."""
    root = tmp_path_factory.mktemp("export_runs")
    for name, shape in SHAPES.items():
        train.main(tiny_train_args(tiny_data, root / name, max_iters=20, n_layer=2, **shape))
    return root


def export_and_load(run, output):
    export.main([f"--out_dir={run}", f"--output={output}"])
    model = transformers.AutoModelForCausalLM.from_pretrained(output, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(output, local_files_only=True)
    return model, tokenizer


def assert_same_model(run, output):
    ours, vocab, _ = load_model(run, "cpu")
    theirs, tokenizer = export_and_load(run, output)
    idx = torch.randint(len(vocab), (2, ours.config.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx)[0], rtol=0, atol=1e-4)
    text = "First Citizen:\nBefore we proceed"
    assert tokenizer(text)["input_ids"] == encode(text, vocab)  # one id per character, ours
    assert tokenizer.decode(encode(text, vocab)) == text
    # Greedy text within block_size: transformers' generate against sample.py with top_k=1.
    prompt = "First"
    new = ours.config.block_size - len(prompt)
    expected = sample.generate_texts(ours, vocab, prompt, 1, new, 1.0, 1, 0, "cpu")[0]
    ids = theirs.generate(torch.tensor([encode(prompt, vocab)]), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)
    assert tokenizer.decode(ids[0]) == expected
    return theirs


@pytest.mark.parametrize("shape", SHAPES)
def test_each_supported_shape_computes_the_same_logits_and_text_in_transformers(shape, runs, tmp_path):
    theirs = assert_same_model(runs / shape, tmp_path / "exported")
    assert type(theirs).__name__ == EXPECTED_CLASS[shape.split("-")[0]]
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    assert (tmp_path / "exported" / "tokenizer.json").is_file()


def test_a_nanogpt_run_exports_too(tmp_path):
    from test_nanogpt_compat import VOCAB, write_nanogpt_run
    torch.manual_seed(0)
    args = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=len(VOCAB), dropout=0.0)
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(**args))
    meta = {"vocab_size": len(VOCAB), "itos": dict(enumerate(VOCAB)), "stoi": {c: i for i, c in enumerate(VOCAB)}}
    write_nanogpt_run(tmp_path / "nanogpt", model, args, meta)
    theirs, _ = export_and_load(tmp_path / "nanogpt", tmp_path / "exported")
    idx = torch.randint(len(VOCAB), (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, model.eval()(idx)[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape, message", [
    (dict(position_encoding="sinusoidal"), "cannot export position_encoding=sinusoidal: no stock transformers "
                                           "architecture adds fixed sinusoids"),
    (dict(norm="rmsnorm"), "cannot export norm=rmsnorm with position_encoding=learned: GPT-2, the stock architecture "
                           "for that, has norm layernorm"),
    (dict(qk_norm=True), "cannot export qk_norm=True with position_encoding=learned: GPT-2"),
    (dict(position_encoding="rope", mlp="swiglu"), "cannot export mlp=swiglu with position_encoding=rope, "
                                                   "norm=layernorm: GPT-NeoX, the stock architecture for that, has "
                                                   "mlp gelu or relu2"),
    (dict(position_encoding="rope", qk_norm=True), "cannot export qk_norm=True with position_encoding=rope, "
                                                   "norm=layernorm: GPT-NeoX"),
    (dict(position_encoding="rope", norm="rmsnorm"), "cannot export mlp=gelu with position_encoding=rope, "
                                                     "norm=rmsnorm, qk_norm=False: Llama"),
    (dict(position_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=True),
     "cannot export bias=True with position_encoding=rope, norm=rmsnorm, qk_norm=True: Qwen3"),
])
def test_a_shape_no_stock_architecture_computes_is_refused_with_its_line(shape, message, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train.main(tiny_train_args(tiny_data, run, max_iters=1, eval_interval=1, **shape))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        export.main([f"--out_dir={run}", f"--output={tmp_path / 'exported'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and message in err
    assert not (tmp_path / "exported").exists()
