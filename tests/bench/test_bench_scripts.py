"""The benchmark scripts' own preparation, which runs before anything is timed."""


def test_nanogpts_data_is_prepared_without_requests_installed(tmp_path):
    """prepare.py imports requests for a download it skips when input.txt is there (requests is no dependency
    of gptkit's: where it is installed, this passes either way)."""
    from vs_nanogpt import prepare_nanogpt

    data = tmp_path / "nanoGPT/data/shakespeare_char"
    data.mkdir(parents=True)
    (data / "prepare.py").write_text(
        "import os\nimport requests\n"
        "here = os.path.dirname(__file__)\n"
        "if not os.path.exists(os.path.join(here, 'input.txt')):\n    requests.get('https://example.com')\n"
        "open(os.path.join(here, 'train.bin'), 'w').write(open(os.path.join(here, 'input.txt')).read())\n")
    text = tmp_path / "tiny.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    prepare_nanogpt(tmp_path / "nanoGPT", text)
    assert (data / "train.bin").read_text() == text.read_text()
