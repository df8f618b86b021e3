"""``bench.startup``'s report section (the timed runs themselves are measured, not tested)."""

from bench.startup import END, START, section, tree_env


def _report(trees):
    run = {"wall_s": 1.5, "load": [0.5, 0.75]}
    fast = {"wall_s": 0.5, "load": [0.5, 0.75]}
    phases = {"seconds": {"imports": 1.0, "load": 0.5, "segment_first": 3.0, "segment_second": 2.0, "decode": 1.9},
              "slices": 36, "load": [1.0, 1.25]}
    return {"date": "2026-11-30", "image": "img.nii.gz", "decoder": "dec", "baseline_label": "abc123",
            "machine": {"cpu": "CPU", "cores": 2, "versions": {"jax": "0.0"}},
            "help": {t: [{"wall_s": 0.3, "load": [0.5, 0.5]}, {"wall_s": 0.2, "load": [0.5, 0.6]}] for t in trees},
            "segment": {t: {"off": [run], "cold": [run], "warm": [run, run]} if t == "baseline" else
                        {"off": [fast], "cold": [fast], "warm": [fast, fast]} for t in trees},
            "phases": {t: phases for t in trees},
            "jax_cache_after_cold": {t: {"files": 3, "mb": 0.1} for t in trees},
            "trees": {t: f"/trees/{t}" for t in trees}}


def test_section_lists_every_run_with_its_load():
    text = section(_report(["current"]))
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "| `fewsam --help` (best of 5) | 0.20 | 0.50 / 0.60 |" in text
    assert text.count("| 0.50 | 0.50 / 0.75 |") == 4 and "(process 3)" in text
    assert "3 files, 0.1 MB (current)" in text
    assert "| decoder alone on the cached embeddings | 1.90 |" in text and "(36 slices" in text


def test_section_compares_baseline_and_current_run_in_turn():
    text = section(_report(["baseline", "current"]))
    assert "| run | before (baseline) s | after (this tree) s | speed-up | load before / after |" in text
    assert text.count("| 1.50 | 0.50 | 3.00x | 0.50 / 0.75 ; 0.50 / 0.75 |") == 4
    assert '"before" is `/trees/baseline` (abc123)' in text
    assert "| phase | baseline | current |" in text


def test_tree_env_puts_the_tree_first():
    env = tree_env({"PYTHONPATH": "/other", "X": "1"}, "/tree")
    assert env["PYTHONPATH"].split(":") == ["/tree", "/other"] and env["X"] == "1"


def test_section_adds_the_students_runs_and_phases():
    report = _report(["current"])
    report.update(student_dir="stu", student_info={"labelled_slices": 25, "rounds": 1},
                  student={"segment": {"off": [{"wall_s": 2.25, "load": [1.0, 1.5]}], "cold": [], "warm": []},
                           "phases": {"seconds": {"imports": 1.0, "load": 0.25, "segment_first": 0.5,
                                                  "segment_second": 0.125, "predict": 0.375},
                                      "slices": 36, "load": [1.0, 1.25]}})
    text = section(report)
    assert text.rstrip().endswith(END) and "`stu`; labelled_slices 25, rounds 1" in text
    assert "| `fewsam segment`, student, compilation cache off | 2.25 | 1.00 / 1.50 |" in text
    assert "| the student alone on 100 slices | 0.38 |" in text and "(36 slices; seconds)" in text


def test_student_phases_worker_times_a_saved_student(tmp_path):
    import nibabel as nib
    import numpy as np
    from flax import nnx

    from bench.startup import STUDENT_SLICES, student_phases_worker
    from fewsam_jax.fewshot import StudentConfig, StudentSegmenter
    from fewsam_jax.fewshot.unet import UNet, UNetConfig
    from fewsam_jax.preprocess import Intensity

    config = StudentConfig(unet=UNetConfig(features=(4, 8), pad_multiple=2))
    unet = UNet(config.student_unet_config, 3, rngs=nnx.Rngs(0))
    unet.canvas = (8, 8)
    StudentSegmenter(unet, {1: "a", 2: "b"}, 2, Intensity.coerce("percentile:0.5,99.5"), config).save(tmp_path / "stu")
    image = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 8, 5)).astype(np.float32), np.eye(4)), image)
    report = student_phases_worker(str(image), str(tmp_path / "stu"))
    assert report["slices"] == 5 and report["predicted"][:2] == [STUDENT_SLICES, 3]
    assert set(report["seconds"]) == {"imports", "load", "segment_first", "segment_second", "predict"}


def test_a_student_folder_without_student_json_is_refused_before_any_run(tmp_path, capsys):
    import pytest

    from bench.startup import main

    with pytest.raises(SystemExit):
        main(["--image", "img.nii.gz", "--decoder", "dec", "--student", str(tmp_path)])
    assert f"--student: {tmp_path} has no student.json" in capsys.readouterr().err
