"""One synthesis of the real app per session (jsii makes each synth cost seconds).

The app is built exactly as `app.py` builds it, with the context from `cdk.json`, an explicit
account (as `cdk deploy` has), cdk-nag attached, and Lambda bundling skipped (no pip run).
cdk-nag failing makes the synthesis raise, so every test here also depends on it passing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# jsii's Node 20 notice would otherwise print on every import.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

aws_cdk = pytest.importorskip("aws_cdk", reason="the infra extra is not installed")
from aws_cdk.assertions import Template  # noqa: E402

from app import build_app  # noqa: E402
from tests.infra.helpers import Synthesized, cdk_json_context  # noqa: E402

ACCOUNT = "123456789012"


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    context = {
        **cdk_json_context(),
        "ltp:account": ACCOUNT,
        "aws:cdk:bundling-stacks": [],
    }
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = aws_cdk.App(context=context, outdir=str(outdir))
    _, stack = build_app(app)
    template = Template.from_stack(stack)
    yield Synthesized(stack, template, template.to_json()["Resources"], outdir)


@pytest.fixture(scope="session")
def template(synthesized: Synthesized) -> Template:
    return synthesized.template
