"""`cdk synth` through the real CDK CLI: offline for AWS (no credentials, no Docker engine),
with the Lambda asset bundled locally by pip.

Needs Node.js (the CLI is the npm devDependency `aws-cdk`, installed with `npm ci` when
node_modules is missing) and PyPI for the bundle's wheels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.infra.helpers import REPO_ROOT

pytestmark = pytest.mark.cdk

CDK = REPO_ROOT / "node_modules" / ".bin" / "cdk"


def offline_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CDK_DEFAULT_"))}  # fmt: skip
    env.update(
        {
            # No credentials anywhere and no instance-metadata probing: synth must not need AWS.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "CDK_DISABLE_CLI_TELEMETRY": "true",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
            # No Docker engine is used; point the client nowhere to prove it.
            "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        }
    )
    return env


@pytest.fixture(scope="module")
def cloud_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed: the CDK CLI needs it (apt-get install nodejs npm)")
    if not CDK.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=REPO_ROOT, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    outdir = tmp_path_factory.mktemp("cdk-cli.out")
    done = subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "--no-lookups", "-o", str(outdir)],
        cwd=REPO_ROOT,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"cdk synth failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return outdir


def test_cdk_synth_produces_the_stack(cloud_assembly: Path) -> None:
    manifest = json.loads((cloud_assembly / "manifest.json").read_text())
    stacks = [name for name, a in manifest["artifacts"].items()
              if a["type"] == "aws:cloudformation:stack"]  # fmt: skip
    assert stacks == ["Ltp-prod"]
    template = json.loads((cloud_assembly / "Ltp-prod.template.json").read_text())
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert {"AWS::ElastiCache::ReplicationGroup", "AWS::ECS::Service",
            "AWS::Scheduler::Schedule", "AWS::CloudFront::Distribution"} <= kinds  # fmt: skip


def lambda_asset_dir(cloud_assembly: Path) -> Path:
    template = json.loads((cloud_assembly / "Ltp-prod.template.json").read_text())
    keys = {
        r["Properties"]["Code"]["S3Key"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
        and r["Properties"].get("Handler", "").startswith("functions.")
    }
    assert len(keys) == 1, "every function shares one code asset"
    return cloud_assembly / f"asset.{keys.pop().removesuffix('.zip')}"


def test_the_lambda_asset_was_bundled_for_lambda_without_pandas(cloud_assembly: Path) -> None:
    asset = lambda_asset_dir(cloud_assembly)
    for needed in ("dhanhq", "redis", "hiredis", "fastapi", "mangum", "aws_lambda_powertools",
                   "orjson", "websockets", "requests", "core", "realtime",
                   "functions"):  # fmt: skip
        assert (asset / needed).is_dir(), needed
    assert (asset / "functions" / "schedule" / "nse_holidays.json").is_file()
    native = list((asset / "pydantic_core").glob("*.so"))
    assert native and all("cpython-312-x86_64-linux-gnu" in so.name for so in native)
    assert not (asset / "pandas").exists()
    assert not (asset / "boto3").exists()
    assert not list(asset.rglob("__pycache__"))


def test_the_image_context_holds_only_what_the_dockerfile_copies(cloud_assembly: Path) -> None:
    assets = json.loads((cloud_assembly / "Ltp-prod.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["dockerFile"] == "streamer/Dockerfile"
    context = cloud_assembly / image["source"]["directory"]
    assert (context / "streamer" / "Dockerfile").is_file()
    assert {p.name for p in context.iterdir()} <= {
        ".dockerignore", "README.md", "pyproject.toml", "core", "realtime", "relay", "streamer"
    }
    assert (context / "relay" / "__main__.py").is_file()  # the bridge container's command
