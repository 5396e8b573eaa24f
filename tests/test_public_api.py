from __future__ import annotations

import subprocess
import sys

import kern_finetune


def test_every_public_name_resolves():
    for name in kern_finetune.__all__:
        assert getattr(kern_finetune, name) is not None, name


def test_import_and_help_stay_light():
    code = "import sys, kern_finetune, kern_finetune.cli as c; c.build_parser(); print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", "False"]


def test_every_error_derives_from_the_base():
    for name in kern_finetune.__all__:
        obj = getattr(kern_finetune, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, kern_finetune.KernFinetuneError)
