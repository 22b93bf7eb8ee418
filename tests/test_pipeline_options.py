"""Tests for pipelines.common.build_pipeline_options."""

import pytest
from apache_beam.options.pipeline_options import PortableOptions

from pipelines import common


@pytest.mark.parametrize(
    "args, timeout_s",
    [
        (["--runner=PrismRunner"], common.LONG_JOB_SERVER_TIMEOUT_S),
        (["--runner=prism", "--streaming"], common.LONG_JOB_SERVER_TIMEOUT_S),
        (["--runner=FlinkRunner", "--flink_master=127.0.0.1:8081"], common.LONG_JOB_SERVER_TIMEOUT_S),
        (["--runner=apache_beam.runners.portability.portable_runner.PortableRunner"],
         common.LONG_JOB_SERVER_TIMEOUT_S),
        (["--runner=PrismRunner", "--job_server_timeout=60"], 60),
        (["--runner=PrismRunner", "--job-server-timeout=45"], 45),
        (["--runner=DirectRunner"], 300),
        ([], 300),
    ],
)
def test_job_server_timeout(args, timeout_s):
    options = common.build_pipeline_options(args)

    assert options.view_as(PortableOptions).job_server_timeout == timeout_s

