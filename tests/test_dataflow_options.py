"""Dataflow GPU options: the flags produced and the rules enforced."""

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.pipeline_options import WorkerOptions

from runners import dataflow

BASE = {
    "project": "my-project",
    "region": "us-central1",
    "temp_location": "gs://my-bucket/tmp",
}


def test_t4_defaults_to_n1_standard_4():
    args = dataflow.dataflow_gpu_args(**BASE)

    assert args == [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp",
        "--streaming",
        "--experiments=use_runner_v2",
        "--dataflow_service_options=worker_accelerator="
        "type:nvidia-tesla-t4;count:1;install-nvidia-driver",
        "--machine_type=n1-standard-4",
    ]


def test_l4_options_parse_in_beam():
    args = dataflow.dataflow_gpu_args(
        **BASE, gpu_type="nvidia-l4", gpu_count=2,
        sdk_container_image="us-docker.pkg.dev/p/r/online-dl:1",
        max_num_workers=4, job_name="online-train")
    options = PipelineOptions(args)

    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(StandardOptions).streaming is True
    google_cloud = options.view_as(GoogleCloudOptions)
    assert google_cloud.dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:2;install-nvidia-driver"
    ]
    assert google_cloud.job_name == "online-train"
    worker = options.view_as(WorkerOptions)
    assert worker.machine_type == "g2-standard-24"
    assert worker.max_num_workers == 4
    assert worker.sdk_container_image == "us-docker.pkg.dev/p/r/online-dl:1"
    assert "use_runner_v2" in options.get_all_options()["experiments"]


def test_cpu_job_has_no_accelerator():
    args = dataflow.dataflow_gpu_args(**BASE, gpu_type=None,
                                      machine_type="n2-standard-4")

    assert not any("worker_accelerator" in arg for arg in args)
    assert "--machine_type=n2-standard-4" in args


def test_a100_picks_machine_for_count():
    args = dataflow.dataflow_gpu_args(**BASE, gpu_type="nvidia-tesla-a100",
                                      gpu_count=4)

    assert "--machine_type=a2-highgpu-4g" in args


def test_custom_n1_machine_accepted():
    args = dataflow.dataflow_gpu_args(**BASE, machine_type="custom-8-30720")

    assert "--machine_type=custom-8-30720" in args


@pytest.mark.parametrize(
    "overrides, message",
    [
        pytest.param({"region": "us-central1-a"},
                     r"region='us-central1-a' is not a Dataflow region",
                     id="zone_as_region"),
        pytest.param({"region": "US"}, r"region='US' is not a Dataflow region",
                     id="bad_region"),
        pytest.param({"project": "My Project"},
                     r"project='My Project' is not a Google Cloud project id",
                     id="bad_project"),
        pytest.param({"temp_location": "/tmp/beam"},
                     r"temp_location='/tmp/beam' is not a Cloud Storage path",
                     id="local_temp"),
        pytest.param({"gpu_type": "nvidia-rtx-4090"},
                     r"gpu_type='nvidia-rtx-4090' is not a Dataflow GPU type",
                     id="unknown_gpu"),
        pytest.param({"gpu_count": 0}, r"gpu_count=0 must be at least 1",
                     id="zero_gpus"),
        pytest.param({"gpu_count": 3},
                     r"gpu_count=3 is not available for nvidia-tesla-t4",
                     id="t4_count"),
        pytest.param({"machine_type": "e2-standard-4"},
                     r"machine_type='e2-standard-4' cannot attach "
                     r"nvidia-tesla-t4",
                     id="t4_on_e2"),
        pytest.param({"gpu_type": "nvidia-l4", "machine_type": "n1-standard-4"},
                     r"machine_type='n1-standard-4' does not come with "
                     r"nvidia-l4; use one of g2-standard-4",
                     id="l4_on_n1"),
        pytest.param({"gpu_type": "nvidia-l4", "gpu_count": 1,
                      "machine_type": "g2-standard-48"},
                     r"gpu_count=1 does not match machine_type="
                     r"'g2-standard-48', which has 4",
                     id="l4_count_mismatch"),
        pytest.param({"gpu_type": "nvidia-l4", "gpu_count": 3},
                     r"gpu_count=3 is not available for nvidia-l4",
                     id="l4_count"),
        pytest.param({"max_num_workers": 0},
                     r"max_num_workers=0 must be at least 1",
                     id="zero_workers"),
    ])
def test_invalid_setting_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        dataflow.dataflow_gpu_args(**{**BASE, **overrides})


def test_cli_prints_one_flag_per_line(capsys):
    assert dataflow.main([
        "--project=my-project", "--region=europe-west4",
        "--temp_location=gs://b/tmp", "--gpu_type=nvidia-l4"
    ]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert "--machine_type=g2-standard-4" in lines
    assert "--region=europe-west4" in lines


def test_cli_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        dataflow.main(["--project=my-project", "--region=us-central1",
                       "--temp_location=/tmp"])

    assert exit_info.value.code == 2
    assert "is not a Cloud Storage path" in capsys.readouterr().err
