"""`distill eval` with the JEDi option pointing at an absent V-JEPA 2 folder: one line, exit 2, nothing sampled."""

def test_an_absent_vjepa2_folder_is_one_line_and_exit_2_before_anything_loads(tmp_path, capsys):
    from distill.cli import main

    missing = tmp_path / "vjepa2-vitl-fpc64-256"
    rc = main(["eval", "--suite", "toyworld-train", "--model", "teacher@2", "--out", str(tmp_path / "out"),
               f"jedi.path={missing}"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "key 'jedi.path'" in line and f"V-JEPA 2 folder '{missing}' does not exist" in line
    assert not (tmp_path / "out" / "cache").exists()  # refused before any clip was sampled
