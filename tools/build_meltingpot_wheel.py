"""Build a dm-meltingpot wheel from its PyPI sdist, for substrate use only.

Why: the sdist's build step downloads a tarball of pretrained *bot* policies from a
host outside the package registries, and ``meltingpot/__init__.py`` imports the bot
and scenario modules, which need tensorflow. ActionParty only drives substrates, so
this script (1) puts an empty assets tarball where the build looks first, (2) drops
tensorflow and the human-play extras (opencv, pandas, pygame) from
``install_requires`` and (3) makes the ``bot``/``scenario`` imports optional.
Everything used here comes from PyPI; nothing is downloaded from elsewhere.

Usage: python tools/build_meltingpot_wheel.py VERSION OUT_DIR
"""

import glob
import os
import re
import subprocess
import sys
import tarfile
import tempfile

ASSETS_NAME = "meltingpot-assets-2.3.0.tar.gz"
DROPPED_REQUIREMENTS = ("tensorflow", "opencv-python", "pandas", "pygame-ce")


def _empty_assets_tarball(path: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("assets")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)


def _patch_setup(path: str) -> None:
    text = open(path).read()
    for name in DROPPED_REQUIREMENTS:
        text, n = re.subn(rf"\n\s*'{re.escape(name)}',", "", text)
        if n != 1:
            raise SystemExit(f"{path}: expected one requirement '{name}', found {n}")
    open(path, "w").write(text)


def _patch_init(path: str) -> None:
    text = open(path).read()
    old = "from meltingpot import bot\nfrom meltingpot import scenario\n"
    if old not in text:
        raise SystemExit(f"{path}: bot/scenario imports not found; unknown dm-meltingpot layout")
    new = (
        "try:  # bots and scenarios need tensorflow; substrates do not.\n"
        "  from meltingpot import bot\n"
        "  from meltingpot import scenario\n"
        "except ImportError:\n"
        "  pass\n"
    )
    open(path, "w").write(text.replace(old, new))


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    version, out_dir = sys.argv[1], os.path.abspath(sys.argv[2])
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"dm-meltingpot=={version}", "-d", tmp],
            check=True,
        )
        (sdist,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [d for d in glob.glob(os.path.join(tmp, "dm*meltingpot-*")) if os.path.isdir(d)]
        os.makedirs(os.path.join(src, "assets"), exist_ok=True)
        _empty_assets_tarball(os.path.join(src, "assets", ASSETS_NAME))
        _patch_setup(os.path.join(src, "setup.py"))
        _patch_init(os.path.join(src, "meltingpot", "__init__.py"))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out_dir, src],
            check=True,
        )
    print(f"built dm-meltingpot {version} without tensorflow/bots/human-play deps "
          f"(substrates only; bot assets are not downloadable here) -> {out_dir}")


if __name__ == "__main__":
    main()
