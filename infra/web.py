"""Web hosting: a private S3 bucket behind CloudFront (origin access control) serving `web/`
plus the deployment's `config.json` (`{"apiUrl", "wsUrl", "tokenUrl"}`), written at deploy
time so that the API URLs (known only then) reach the page without a rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

CONFIG_FILE = "config.json"
PRICE_CLASSES = {
    "100": cloudfront.PriceClass.PRICE_CLASS_100,
    "200": cloudfront.PriceClass.PRICE_CLASS_200,
    "All": cloudfront.PriceClass.PRICE_CLASS_ALL,
}


def has_site_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


class WebHosting(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        site_dir: Path,
        price_class: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.site_dir = site_dir
        self.bucket = s3.Bucket(
            self,
            "Site",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # The content is rebuilt from the repository on every deploy: nothing to keep.
            removal_policy=RemovalPolicy.DESTROY,
            auto_delete_objects=True,
        )
        origin = origins.S3BucketOrigin.with_origin_access_control(self.bucket)
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="LTP screener page",
            default_root_object="index.html",
            price_class=PRICE_CLASSES[price_class],
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            default_behavior=cloudfront.BehaviorOptions(
                origin=origin,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
                compress=True,
            ),
            additional_behaviors={
                # A redeploy may change the API URLs; the page must never see a stale one.
                f"/{CONFIG_FILE}": cloudfront.BehaviorOptions(
                    origin=origin,
                    viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                    cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                ),
            },
        )
        self.url = f"https://{self.distribution.distribution_domain_name}"

    def deploy_site(self, *, config: Mapping[str, str]) -> s3deploy.BucketDeployment:
        """Upload `web/` (whatever the page build left there) and the runtime config."""
        sources = [s3deploy.Source.json_data(CONFIG_FILE, dict(config))]
        if has_site_files(self.site_dir):
            sources.insert(0, s3deploy.Source.asset(str(self.site_dir)))
        return s3deploy.BucketDeployment(
            self,
            "Deploy",
            destination_bucket=self.bucket,
            sources=sources,
            distribution=self.distribution,
            distribution_paths=["/*"],
            memory_limit=512,
            cache_control=[s3deploy.CacheControl.max_age(Duration.minutes(5))],
        )
