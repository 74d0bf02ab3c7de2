import os
import shutil
import time

import pytest

import sample


def run_sample(capsys, *args):
    texts = sample.main(list(args))
    return texts, capsys.readouterr()


def test_sampling_end_to_end(tiny_run, capsys):
    texts, out = run_sample(capsys, f"--out_dir={tiny_run}", "--start=First", "--num_samples=2",
                            "--max_new_tokens=30", "--seed=7")
    assert len(texts) == 2
    assert all(t.startswith("First") and len(t) == len("First") + 30 for t in texts)
    assert texts[0] in out.out and "best.pt" in out.out
    assert texts[0] != texts[1]  # generated as one batch, but each sample draws its own characters
    again, _ = run_sample(capsys, f"--out_dir={tiny_run}", "--start=First", "--num_samples=2",
                          "--max_new_tokens=30", "--seed=7")
    assert again == texts


def test_prompt_from_file(tiny_run, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Citizen:\n", encoding="utf-8")
    texts, _ = run_sample(capsys, f"--out_dir={tiny_run}", f"--start=FILE:{prompt}", "--num_samples=1",
                          "--max_new_tokens=5")
    assert texts[0].startswith("Citizen:\n")


def test_unknown_prompt_characters_are_listed(tiny_run, capsys):
    with pytest.raises(SystemExit) as exc:
        sample.main([f"--out_dir={tiny_run}", "--start=Hello €uro ☃"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "never saw" in err and "'€'" in err and "'☃'" in err


def test_latest_run_is_the_default(tiny_run, tmp_path, monkeypatch, capsys):
    for name in ("older", "newer"):
        shutil.copytree(tiny_run, tmp_path / "out" / name)
    past = time.time() - 3600
    os.utime(tmp_path / "out" / "older" / "best.pt", (past, past))
    monkeypatch.chdir(tmp_path)
    _, out = run_sample(capsys, "--num_samples=1", "--max_new_tokens=3")
    assert "sampling from out/newer" in out.out


@pytest.mark.parametrize("args, message", [
    (["--max_new_tokens=0"], "'max_new_tokens' must be a positive integer"),
    (["--temperature=0"], "'temperature' must be > 0, got 0.0; for the likeliest character every time use --top_k=1"),
    (["--top_k=-2"], "'top_k' must be >= 0"),
    (["--out_dir=/no/such/run"], "run folder '/no/such/run' not found"),
    (["--tempreature=0.5"], "did you mean 'temperature'?"),
])
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit):
        sample.main(args)
    assert message in capsys.readouterr().err
