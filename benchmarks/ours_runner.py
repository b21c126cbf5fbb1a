"""Build attribution graphs with tl_clt on a local Qwen3 folder and CLT folder (see runner_common.py).

`PYTHONPATH=. python benchmarks/ours_runner.py ...`; prints one `BENCH_RESULT {json}` line.
"""

from __future__ import annotations

import time
import warnings

import torch
from runner_common import (
    DTYPES,
    current_rss_mib,
    emit,
    gpu_allocated_mib,
    matmul_rate,
    parse_args,
    repeat_graphs,
    save_graph,
    timed,
    token_list,
)

warnings.filterwarnings("ignore")

import tl_clt  # noqa: E402
from tl_clt.transpose import default_compute_dtype  # noqa: E402


def copy_weights_out_of_file(model) -> None:
    """What-if for README: parameters that `load_qwen3` leaves as views of the safetensors file mapping
    (those it does not transpose or cast, e.g. W_E) keep the whole mapped file resident; copy them."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()


def main() -> None:
    args = parse_args(
        __doc__,
        extra=[
            ("--copy-weights", "what-if: see copy_weights_out_of_file"),
            ("--fresh-buffers", "no tl_clt.Workspace: fresh work memory per graph (default: one, shared)"),
        ],
        options=[
            ("--compute-dtype", None, "attribute(compute_dtype=...): float32, bfloat16, float64"),
            ("--decoder-cache-gib", None, "attribute(decoder_cache_bytes=...) in GiB (default: auto)"),
        ],
    )
    dtype = DTYPES[args.dtype]
    model, model_s = timed(tl_clt.load_qwen3, args.model, device=args.device, dtype=dtype)
    if args.copy_weights:
        copy_weights_out_of_file(model)
    clt_dtype = {"same": dtype, "disk": None}.get(args.clt_dtype) or DTYPES.get(args.clt_dtype)
    clt, clt_s = timed(
        tl_clt.CrossLayerTranscoder.from_pretrained, args.clt, dtype=clt_dtype, device=args.device
    )
    rss_loaded, gpu_loaded = current_rss_mib(), gpu_allocated_mib()
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    tokens = torch.tensor(token_list(args))
    cache_bytes = None if args.decoder_cache_gib is None else int(float(args.decoder_cache_gib) * 2**30)

    # the repeats share one workspace, as the graphs of a many-prompt run do (tl_clt.Workspace)
    workspace = None if args.fresh_buffers else tl_clt.Workspace()

    def build():
        return tl_clt.attribute(
            model,
            clt,
            tokens,
            max_n_logits=args.max_n_logits,
            desired_logit_prob=args.desired_logit_prob,
            max_feature_nodes=args.max_feature_nodes,
            batch_size=args.batch_size,
            verbose=False,
            compute_dtype=DTYPES[args.compute_dtype] if args.compute_dtype else None,
            decoder_cache_bytes=cache_bytes,
            workspace=workspace,
        )

    # the roofline's rate: the best of a measurement before and one after the graphs (same process,
    # same load), so that a moment of contention on a shared machine does not stand for its limit
    expected = DTYPES[args.compute_dtype] if args.compute_dtype else default_compute_dtype(dtype)
    before = (
        matmul_rate(expected, device=args.device),
        matmul_rate(expected, device=args.device, clock=time.process_time),
    )
    graph, times = repeat_graphs(args, build)
    compute_dtype = DTYPES[graph.meta["compute_dtype"]]
    rate = matmul_rate(compute_dtype, device=args.device)
    cpu_rate = matmul_rate(compute_dtype, device=args.device, clock=time.process_time)
    if compute_dtype == expected:
        rate, cpu_rate = max(rate, before[0]), max(cpu_rate, before[1])
    if args.save_graph:
        save_graph(
            args.save_graph,
            adjacency=graph.adjacency,
            active_features=graph.active_features,
            activation_values=graph.activation_values,
            selected_features=graph.selected_features,
            logit_tokens=graph.logit_tokens,
            logit_probabilities=graph.logit_probabilities,
        )
    emit(
        dict(
            engine="tl_clt",
            workspace=not args.fresh_buffers,
            load_s=model_s + clt_s,
            clt_load_s=clt_s,
            model_mib=model_mib,
            clt_dtype=str(clt.dtype).removeprefix("torch."),
            times=times,
            n_pos=len(tokens),
            n_active=int(graph.meta["n_active_features"]),
            n_selected=graph.n_features,
            n_logits=graph.n_logits,
            n_backward=int(graph.meta["n_backward_passes"]),
            seconds_setup=graph.meta.get("seconds_setup"),
            seconds_rows=graph.meta.get("seconds_rows"),
            rss_after_load_mib=rss_loaded,
            gpu_after_load_mib=gpu_loaded,
            compute_dtype=graph.meta["compute_dtype"],
            row_flops=graph.meta["row_flops"],
            matmul_rate=rate,
            cpu_times=args.cpu_times,
            matmul_rate_cpu=cpu_rate,
            roofline_s=graph.meta["row_flops"] / rate,
            seconds_gradients=graph.meta["seconds_gradients"],
            seconds_contract=graph.meta["seconds_contract"],
            seconds_influence=graph.meta["seconds_influence"],
            decoder_bytes_cached=graph.meta["decoder_bytes_cached"],
            decoder_bytes_read=graph.meta["decoder_bytes_read"],
        )
    )


if __name__ == "__main__":
    main()
