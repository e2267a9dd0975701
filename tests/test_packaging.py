"""One import root (`stagelearn.*`) from the editable install and from a built wheel; the CLI entry points."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cmd


def test_editable_install_imports_from_checkout():
    import stagelearn
    import stagelearn.analytics
    import stagelearn.sim_mocks
    import stagelearn.staging

    for mod, folder in [(stagelearn.staging, "staging"), (stagelearn.analytics, "analytics"), (stagelearn.sim_mocks, "sim_mocks")]:
        assert os.path.dirname(mod.__file__) == str(REPO / folder)


def test_cli_entry_points(tmp_path):
    for args in ([sys.executable, "-m", "stagelearn", "--version"], [os.path.join(os.path.dirname(sys.executable), "stagelearn"), "--version"]):
        proc = run_cmd(args, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.startswith("stagelearn "), proc.stderr


@pytest.mark.timeout(300)
def test_built_wheel_imports(tmp_path):
    wheel_dir, target = tmp_path / "wheels", tmp_path / "site"
    proc = run_cmd([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(REPO)],
                   timeout=240)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheel_dir.glob("stagelearn-*.whl")
    proc = run_cmd([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    code = ("import stagelearn, stagelearn.staging, stagelearn.analytics, stagelearn.sim_mocks, importlib.resources as r;"
            "print(stagelearn.staging.__file__);"
            "print((r.files('stagelearn.xml_configs') / 'stagelearn.xml').is_file())")
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    path, has_xml = proc.stdout.split()
    assert path.startswith(str(target)) and has_xml == "True"
