"""`tinydiff visualize app`: start the Streamlit viewer on this machine."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..errors import TinydiffError
from .ui import console

SCRIPT = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"


def streamlit_command(*, host: str, port: int, open_browser: bool) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(SCRIPT), "--server.address", host, "--server.port", str(port),
            "--server.headless", "false" if open_browser else "true", "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false", "--client.toolbarMode", "minimal"]


def run_app(*, runs: Path, host: str, port: int, open_browser: bool) -> None:
    if importlib.util.find_spec("streamlit") is None:
        raise TinydiffError("the app needs the app extra: pip install 'tinydiff[app]', or '.[app]' in a clone of the repository")
    if not 1 <= port <= 65535:
        raise TinydiffError(f"--port must be between 1 and 65535, got {port}")
    env = {**os.environ, "TINYDIFF_APP_RUNS": str(runs.resolve())}
    console.print(f"tinydiff viewer for models under {runs.resolve()}: http://{host}:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    command = streamlit_command(host=host, port=port, open_browser=open_browser)
    # Become the server rather than its parent, so that a signal to this process (Ctrl-C, kill, a test's
    # terminate()) reaches Streamlit itself and no orphaned server is left behind.
    os.execve(command[0], command, env)
