"""`bert-app [--model DIR_OR_HUB_ID] [--backend torch|onnx|onnx-int8] [--port 8501]`: start the Streamlit app (the same
as `streamlit run app/streamlit_app.py -- --model DIR --backend B`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stagekit.cli import doc_summary

APP = Path(__file__).resolve().parent / "streamlit_app.py"


def launch(model: str | Path | None = None, port: int = 8501, backend: str | None = None) -> int:
    """Run the app until Ctrl+C; returns streamlit's exit status."""
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    app_args = (["--model", str(model)] if model is not None else []) + (["--backend", backend] if backend else [])
    if app_args:
        command += ["--", *app_args]
    if model is not None:
        print(f"starting the app on {model}: open http://localhost:{port} (Ctrl+C stops it)", flush=True)
    return subprocess.run(command, check=False).returncode


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bert-app", description=doc_summary(__doc__))
    parser.add_argument(
        "--model", help="model folder or Hub id owner/name (default: the newest trained run under outputs/)"
    )
    # Not checked here, so the launcher stays free of torch: the app refuses an unknown one in one line.
    parser.add_argument("--backend", help="torch (default), onnx or onnx-int8: the model's ONNX export")
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args(argv)
    sys.exit(launch(args.model, args.port, args.backend))


if __name__ == "__main__":
    main()
