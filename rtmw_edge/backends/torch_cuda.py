"""PyTorch-CUDA engines: the project's exported ONNX (or the PyTorch model itself) on the GPU, behind the
`DeviceEngine` interface, so the whole GPU runtime runs and is measured on GPUs without TensorRT.

`OnnxTorchGraph` executes an ONNX graph op by op with PyTorch (the op set `export.py` emits, plus the
usual shape ops and Q/DQ); its weights are the ONNX initializers, so the engine runs exactly the file
the user has, FP32 or FP16. Shape arithmetic stays on the CPU (no device round trip for a `Reshape`),
tensors on the device. `TorchModuleGraph` instead runs a registered PyTorch model (with the export's
wrappers: flip test, decode, detector top-k) built from a checkpoint.

`TorchCudaEngine.infer_async(inputs, outputs, stream, batch)` wraps the given device pointers as
tensors (`__cuda_array_interface__`, zero-copy), runs on the given stream (`torch.cuda.ExternalStream`)
and copies each result into its output buffer on that stream; it never synchronises. TF32 is off by
default (fidelity to the FP32 CPU pipeline); `allow_tf32=True` trades that for speed on Ampere+.

The same object also serves the host `Engine` interface (`run(numpy) -> numpy`, `input_shape[2]`), for the
CPU pipeline with GPU inference (`PoseEstimator(backend="torch-cuda")`) and the benchmark's comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RtmwEdgeError, require
from ..onnx_meta import read_metadata

DEFAULT_MAX_BATCH = 64
_UNSUPPORTED = {"NonMaxSuppression": "the graph runs NonMaxSuppression (exported with --nms, an ONNX Runtime "
                                     "convenience): export the detector without --nms for the GPU runtime"}
# inputs an op reads on the host (by position): always given as CPU tensors
_HOST_ARGS = {"Reshape": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,), "Split": (1,),
              "Expand": (1,), "Tile": (1,), "TopK": (1,), "Clip": (1, 2), "Resize": (1, 2, 3), "Pad": (1, 2),
              "ConstantOfShape": (0,), "Range": (0, 1, 2), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceSum": (1,),
              "ReduceMean": (1,), "ReduceProd": (1,), "ReduceL2": (1,)}
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 16: "bfloat16"}


def _torch():
    return require("torch", "export")


def _torch_dtype(onnx_type: int):
    torch = _torch()
    name = _ONNX_DTYPES.get(int(onnx_type))
    if name is None:
        raise RtmwEdgeError(f"ONNX tensor type {onnx_type} is not supported by the torch-cuda backend")
    return getattr(torch, name)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


class OnnxTorchGraph:
    """An ONNX graph run with PyTorch ops on one device (CPU for tests, CUDA for the engine)."""

    def __init__(self, model, device="cpu") -> None:
        import onnx
        from onnx import numpy_helper

        torch = _torch()
        if isinstance(model, (str, Path)):
            model = onnx.load(str(model))
        self.device = torch.device(device)
        graph = model.graph
        self.nodes = list(graph.node)
        unknown = sorted({n.op_type for n in self.nodes if n.domain not in ("", "ai.onnx")} |
                         {n.op_type for n in self.nodes if not hasattr(self, f"_op_{n.op_type}")})
        for op in unknown:
            if op in _UNSUPPORTED:
                raise RtmwEdgeError(f"torch-cuda backend: {_UNSUPPORTED[op]}")
        if unknown:
            raise RtmwEdgeError(f"torch-cuda backend: unsupported ONNX ops {', '.join(unknown)} "
                                "(use --backend onnxruntime or tensorrt for this graph)")
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        # every initializer on both sides: the device copy feeds data ops, the CPU copy shape arithmetic and
        # the arguments read on the host (Reshape shapes, Clip bounds, Slice ranges...), so a run never
        # reads a device value back (no host synchronisation) and never copies a weight to the device
        self.cpu_consts: dict[str, object] = {}
        self.dev_consts: dict[str, object] = {}
        for init in graph.initializer:
            t = torch.from_numpy(np.array(numpy_helper.to_array(init), copy=True))
            self.cpu_consts[init.name] = t
            self.dev_consts[init.name] = t.to(self.device)
        for node in [n for n in self.nodes if n.op_type == "Constant"]:  # constants are initializers too
            t = self._op_Constant(node, [], _attrs(node)).cpu()
            self.cpu_consts[node.output[0]] = t
            self.dev_consts[node.output[0]] = t.to(self.device)
        self.nodes = [n for n in self.nodes if n.op_type != "Constant"]
        inits = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.host_reads = 0  # device values read back on the host while running (0 for the project's graphs)
        self.output_names = [o.name for o in graph.output]

    # -- execution
    def run(self, inputs: dict[str, object]) -> dict[str, object]:
        torch = _torch()
        env: dict[str, object] = {}
        for name in self.input_names:
            if name not in inputs:
                raise RtmwEdgeError(f"missing graph input {name!r}")
            env[name] = inputs[name]
        with torch.no_grad():
            for node in self.nodes:
                args = self._args(env, node)
                outs = getattr(self, f"_op_{node.op_type}")(node, args, _attrs(node))
                if not isinstance(outs, (list, tuple)):
                    outs = [outs]
                for name, value in zip(node.output, outs):
                    if name:
                        env[name] = value
        return {name: env[name] for name in self.output_names}

    def _args(self, env, node) -> list:
        """The node's inputs: produced values as they are; an initializer's CPU copy where the op reads it on
        the host or where every produced input is on the CPU (shape arithmetic), else its device copy."""
        host = _HOST_ARGS.get(node.op_type, ())
        produced = [env[n] for n in node.input if n and n in env]
        on_cpu = all(getattr(v, "device", None) is None or v.device.type == "cpu" for v in produced)
        args = []
        for i, name in enumerate(node.input):
            if not name:
                args.append(None)
            elif name in env:
                value = env[name]
                if i in host and value.device.type != "cpu":
                    self.host_reads += 1   # a device value read on the host: a synchronisation (counted)
                    value = value.cpu()
                args.append(value)
            elif name in self.cpu_consts:
                args.append(self.cpu_consts[name] if (i in host or on_cpu) else self.dev_consts[name])
            else:
                raise RtmwEdgeError(f"ONNX value {name!r} is used before it is produced")
        return args

    def _same_device(self, args):
        """Data ops mixing devices: CPU tensors go to the device (asynchronously; 0-dim ones stay)."""
        tensors = [a for a in args if a is not None]
        if not tensors or all(t.device == tensors[0].device for t in tensors):
            return args
        return [a if a is None or a.device == self.device or a.dim() == 0 else a.to(self.device, non_blocking=True)
                for a in args]

    # -- elementwise
    def _binary(self, args, fn):
        a, b = self._same_device(args)
        return fn(a, b)

    def _op_Add(self, node, args, attrs):
        return self._binary(args, lambda a, b: a + b)

    def _op_Sub(self, node, args, attrs):
        return self._binary(args, lambda a, b: a - b)

    def _op_Mul(self, node, args, attrs):
        return self._binary(args, lambda a, b: a * b)

    def _op_Div(self, node, args, attrs):
        torch = _torch()

        def div(a, b):
            if not a.is_floating_point() and not b.is_floating_point():
                return torch.div(a, b, rounding_mode="trunc")
            return a / b
        return self._binary(args, div)

    def _op_Pow(self, node, args, attrs):
        return self._binary(args, lambda a, b: a ** b)

    def _variadic(self, args, fn):
        args = self._same_device(args)
        out = args[0]
        for other in args[1:]:
            out = fn(out, other)
        return out

    def _op_Max(self, node, args, attrs):
        return self._variadic(args, _torch().maximum)

    def _op_Min(self, node, args, attrs):
        return self._variadic(args, _torch().minimum)

    def _op_Sum(self, node, args, attrs):
        return self._variadic(args, lambda a, b: a + b)

    def _op_Equal(self, node, args, attrs):
        return self._binary(args, lambda a, b: a == b)

    def _op_Less(self, node, args, attrs):
        return self._binary(args, lambda a, b: a < b)

    def _op_LessOrEqual(self, node, args, attrs):
        return self._binary(args, lambda a, b: a <= b)

    def _op_Greater(self, node, args, attrs):
        return self._binary(args, lambda a, b: a > b)

    def _op_GreaterOrEqual(self, node, args, attrs):
        return self._binary(args, lambda a, b: a >= b)

    def _op_And(self, node, args, attrs):
        return self._binary(args, lambda a, b: a & b)

    def _op_Or(self, node, args, attrs):
        return self._binary(args, lambda a, b: a | b)

    def _op_Not(self, node, args, attrs):
        return ~args[0]

    def _op_Where(self, node, args, attrs):
        c, a, b = self._same_device(args)
        return _torch().where(c, a, b)

    def _op_Relu(self, node, args, attrs):
        return _torch().relu(args[0])

    def _op_Sigmoid(self, node, args, attrs):
        return _torch().sigmoid(args[0])

    def _op_HardSigmoid(self, node, args, attrs):
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        return (args[0] * alpha + beta).clamp(0.0, 1.0)

    def _op_HardSwish(self, node, args, attrs):
        return _torch().nn.functional.hardswish(args[0])

    def _op_Abs(self, node, args, attrs):
        return args[0].abs()

    def _op_Neg(self, node, args, attrs):
        return -args[0]

    def _op_Sqrt(self, node, args, attrs):
        return args[0].sqrt()

    def _op_Reciprocal(self, node, args, attrs):
        return args[0].reciprocal()

    def _op_Exp(self, node, args, attrs):
        return args[0].exp()

    def _op_Log(self, node, args, attrs):
        return args[0].log()

    def _op_Tanh(self, node, args, attrs):
        return args[0].tanh()

    def _op_Erf(self, node, args, attrs):
        return _torch().erf(args[0])

    def _op_Floor(self, node, args, attrs):
        return args[0].floor()

    def _op_Clip(self, node, args, attrs):
        x = args[0]
        lo = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
        hi = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
        lo = lo.item() if hasattr(lo, "item") else lo
        hi = hi.item() if hasattr(hi, "item") else hi
        return x.clamp(lo, hi)

    def _op_Softmax(self, node, args, attrs):
        return args[0].softmax(dim=attrs.get("axis", -1))

    def _op_Identity(self, node, args, attrs):
        return args[0]

    def _op_Cast(self, node, args, attrs):
        return args[0].to(_torch_dtype(attrs["to"]))

    # -- shapes and indexing
    def _op_Shape(self, node, args, attrs):
        shape = list(args[0].shape)
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return _torch().tensor(shape[start:end], dtype=_torch().int64)

    def _op_Constant(self, node, args, attrs):
        from onnx import numpy_helper

        torch = _torch()
        if "value" in attrs:
            t = torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"]), copy=True))
        elif "value_float" in attrs:
            t = torch.tensor(attrs["value_float"], dtype=torch.float32)
        elif "value_int" in attrs:
            t = torch.tensor(attrs["value_int"], dtype=torch.int64)
        elif "value_ints" in attrs:
            t = torch.tensor(list(attrs["value_ints"]), dtype=torch.int64)
        elif "value_floats" in attrs:
            t = torch.tensor(list(attrs["value_floats"]), dtype=torch.float32)
        else:
            raise RtmwEdgeError(f"Constant {node.name}: unsupported attribute {list(attrs)}")
        return t

    def _op_ConstantOfShape(self, node, args, attrs):
        from onnx import numpy_helper

        torch = _torch()
        shape = _ints(args[0])
        value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        t = torch.full(shape, value.reshape(-1)[0].item(), dtype=getattr(torch, value.dtype.name))
        return t.to(self.device) if t.is_floating_point() or t.numel() > 64 else t

    def _op_Reshape(self, node, args, attrs):
        x, shape = args[0], _ints(args[1])
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)

    def _op_Flatten(self, node, args, attrs):
        x = args[0]
        axis = attrs.get("axis", 1) % max(x.dim(), 1) if x.dim() else 0
        return x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)

    def _op_Transpose(self, node, args, attrs):
        perm = attrs.get("perm", list(range(args[0].dim()))[::-1])
        return args[0].permute(*perm)

    def _axes(self, args, attrs, index: int = 1):
        if len(args) > index and args[index] is not None:
            return _ints(args[index])
        return list(attrs.get("axes", []))

    def _op_Unsqueeze(self, node, args, attrs):
        x = args[0]
        axes = self._axes(args, attrs)
        rank = x.dim() + len(axes)
        for a in sorted(a % rank for a in axes):
            x = x.unsqueeze(a)
        return x

    def _op_Squeeze(self, node, args, attrs):
        x = args[0]
        axes = self._axes(args, attrs)
        if not axes:
            return x.squeeze()
        for a in sorted((a % x.dim() for a in axes), reverse=True):
            x = x.squeeze(a)
        return x

    def _op_Concat(self, node, args, attrs):
        args = self._same_device([a for a in args if a is not None])
        return _torch().cat(args, dim=attrs["axis"])

    def _op_Split(self, node, args, attrs):
        x, axis = args[0], attrs.get("axis", 0)
        if len(args) > 1 and args[1] is not None:
            sizes = _ints(args[1])
        elif "split" in attrs:
            sizes = list(attrs["split"])
        else:
            parts = attrs.get("num_outputs", len(node.output))
            step = -(-x.shape[axis] // parts)
            sizes = [min(step, x.shape[axis] - i * step) for i in range(parts)]
        return list(x.split(sizes, dim=axis))

    def _op_Slice(self, node, args, attrs):
        torch = _torch()
        x = args[0]
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            dim = x.shape[axis]
            if step > 0:
                s = min(max(start + dim if start < 0 else start, 0), dim)
                e = min(max(end + dim if end < 0 else end, 0), dim)
                index = [slice(None)] * x.dim()
                index[axis] = slice(s, max(e, s), step)
                x = x[tuple(index)]
            else:
                s = min(max(start + dim if start < 0 else start, -1), dim - 1)
                e = min(max(end + dim if end < 0 else end, -1), dim - 1)
                idx = torch.arange(s, e, step, device=x.device)
                x = x.index_select(axis, idx)
        return x

    def _op_Gather(self, node, args, attrs):
        x, idx = args
        axis = attrs.get("axis", 0) % x.dim()
        if idx.device != x.device:
            idx = idx.to(x.device, non_blocking=True)
        idx = idx.long()
        idx = _torch().where(idx < 0, idx + x.shape[axis], idx)
        out = x.index_select(axis, idx.reshape(-1))
        return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))

    def _op_GatherElements(self, node, args, attrs):
        x, idx = self._same_device(args)
        axis = attrs.get("axis", 0)
        idx = idx.long()
        idx = _torch().where(idx < 0, idx + x.shape[axis], idx)
        return x.gather(axis, idx)

    def _op_Expand(self, node, args, attrs):
        x, shape = args[0], _ints(args[1])
        return x.expand(_torch().broadcast_shapes(tuple(x.shape), tuple(shape)))

    def _op_Tile(self, node, args, attrs):
        return args[0].repeat(*_ints(args[1]))

    def _op_Range(self, node, args, attrs):
        start, limit, delta = (a.item() for a in args)
        return _torch().arange(start, limit, delta, dtype=args[0].dtype, device=args[0].device)

    def _op_DepthToSpace(self, node, args, attrs):
        x, b = args[0], attrs["blocksize"]
        n, c, h, w = x.shape
        if attrs.get("mode", b"DCR") in (b"CRD", "CRD"):
            return _torch().nn.functional.pixel_shuffle(x, b)
        x = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c // (b * b), h * b, w * b)

    # -- reductions
    def _reduce(self, node, args, attrs, fn):
        x = args[0]
        axes = self._axes(args, attrs)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [a % x.dim() for a in axes], keep)

    def _op_ReduceMax(self, node, args, attrs):
        return self._reduce(node, args, attrs, lambda x, d, k: x.amax(dim=d, keepdim=k))

    def _op_ReduceMin(self, node, args, attrs):
        return self._reduce(node, args, attrs, lambda x, d, k: x.amin(dim=d, keepdim=k))

    def _op_ReduceSum(self, node, args, attrs):
        return self._reduce(node, args, attrs, lambda x, d, k: x.sum(dim=d, keepdim=k))

    def _op_ReduceMean(self, node, args, attrs):
        return self._reduce(node, args, attrs, lambda x, d, k: x.mean(dim=d, keepdim=k))

    def _op_ReduceProd(self, node, args, attrs):
        def prod(x, dims, keep):
            for d in sorted(dims, reverse=True):
                x = x.prod(dim=d, keepdim=keep)
            return x
        return self._reduce(node, args, attrs, prod)

    def _op_ReduceL2(self, node, args, attrs):
        return self._reduce(node, args, attrs, lambda x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt())

    def _op_ArgMax(self, node, args, attrs):
        x = args[0]
        axis, keep = attrs.get("axis", 0), bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):
            flipped = x.flip(axis).argmax(dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return x.argmax(dim=axis, keepdim=keep)

    def _op_TopK(self, node, args, attrs):
        x, k = args[0], int(_ints(args[1])[0])
        values, index = x.topk(k, dim=attrs.get("axis", -1), largest=bool(attrs.get("largest", 1)),
                               sorted=bool(attrs.get("sorted", 1)))
        return [values, index]

    # -- neural network
    def _pads(self, attrs, spatial: int):
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise RtmwEdgeError("auto_pad SAME_* is not supported by the torch-cuda backend")
        return pads[:spatial], pads[spatial:]

    def _op_Conv(self, node, args, attrs):
        torch = _torch()
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else None
        spatial = w.dim() - 2
        begin, end = self._pads(attrs, spatial)
        strides = attrs.get("strides", [1] * spatial)
        dilations = attrs.get("dilations", [1] * spatial)
        groups = attrs.get("group", 1)
        conv = torch.nn.functional.conv2d if spatial == 2 else torch.nn.functional.conv1d
        if begin == end:
            return conv(x, w, b, stride=strides, padding=begin, dilation=dilations, groups=groups)
        pad = [p for pair in zip(begin[::-1], end[::-1]) for p in pair]
        return conv(torch.nn.functional.pad(x, pad), w, b, stride=strides, dilation=dilations, groups=groups)

    def _op_MaxPool(self, node, args, attrs):
        torch = _torch()
        x = args[0]
        kernel = attrs["kernel_shape"]
        begin, end = self._pads(attrs, len(kernel))
        strides = attrs.get("strides", [1] * len(kernel))
        ceil = bool(attrs.get("ceil_mode", 0))
        dil = attrs.get("dilations", [1] * len(kernel))
        if begin != end:
            pad = [p for pair in zip(begin[::-1], end[::-1]) for p in pair]
            x = torch.nn.functional.pad(x, pad, value=float("-inf"))
            begin = [0] * len(kernel)
        return torch.nn.functional.max_pool2d(x, kernel, strides, begin, dil, ceil_mode=ceil)

    def _op_AveragePool(self, node, args, attrs):
        kernel = attrs["kernel_shape"]
        begin, end = self._pads(attrs, len(kernel))
        if begin != end:
            raise RtmwEdgeError("asymmetric AveragePool padding is not supported by the torch-cuda backend")
        return _torch().nn.functional.avg_pool2d(args[0], kernel, attrs.get("strides", kernel), begin,
                                                 ceil_mode=bool(attrs.get("ceil_mode", 0)),
                                                 count_include_pad=bool(attrs.get("count_include_pad", 0)))

    def _op_GlobalAveragePool(self, node, args, attrs):
        x = args[0]
        return x.mean(dim=list(range(2, x.dim())), keepdim=True)

    def _op_MatMul(self, node, args, attrs):
        a, b = self._same_device(args)
        return a @ b

    def _op_Gemm(self, node, args, attrs):
        a, b = args[0], args[1]
        if attrs.get("transA", 0):
            a = a.t()
        if attrs.get("transB", 0):
            b = b.t()
        out = attrs.get("alpha", 1.0) * (a @ b)
        if len(args) > 2 and args[2] is not None:
            out = out + attrs.get("beta", 1.0) * args[2]
        return out

    def _op_BatchNormalization(self, node, args, attrs):
        x, scale, bias, mean, var = args[:5]
        return _torch().nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))

    def _op_Resize(self, node, args, attrs):
        torch = _torch()
        x = args[0]
        scales = args[2] if len(args) > 2 and args[2] is not None and args[2].numel() else None
        sizes = args[3] if len(args) > 3 and args[3] is not None and args[3].numel() else None
        if sizes is not None:
            out_hw = _ints(sizes)[2:]
        else:
            sc = [float(v) for v in scales.reshape(-1).tolist()]
            out_hw = [int(np.floor(d * s)) for d, s in zip(x.shape[2:], sc[2:])]
            sc_hw = sc[2:]
        mode = attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctm = attrs.get("coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        if mode == "nearest":
            nearest = attrs.get("nearest_mode", b"round_prefer_floor")
            nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
            if (ctm, nearest) == ("asymmetric", "floor") and sizes is None and all(float(v).is_integer()
                                                                                 for v in sc_hw):
                # the exports' upsampling (×2, asymmetric, floor) is exactly PyTorch's "nearest"
                return torch.nn.functional.interpolate(x, scale_factor=[float(v) for v in sc_hw], mode="nearest")
            for axis, out_size in zip(range(2, x.dim()), out_hw):
                in_size = x.shape[axis]
                scale = (sc_hw[axis - 2] if sizes is None else out_size / in_size)
                o = torch.arange(out_size, dtype=torch.float64)
                if ctm == "asymmetric":
                    src = o / scale
                elif ctm == "align_corners":
                    src = o * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
                elif ctm in ("half_pixel", "pytorch_half_pixel"):
                    src = (o + 0.5) / scale - 0.5
                    if ctm == "pytorch_half_pixel" and out_size == 1:
                        src = torch.zeros_like(o)
                elif ctm == "tf_half_pixel_for_nn":
                    src = (o + 0.5) / scale
                else:
                    raise RtmwEdgeError(f"Resize coordinate mode {ctm} is not supported by the torch-cuda backend")
                if nearest == "floor":
                    idx = src.floor()
                elif nearest == "ceil":
                    idx = src.ceil()
                elif nearest == "round_prefer_ceil":
                    idx = (src + 0.5).floor()
                else:  # round_prefer_floor
                    idx = (src - 0.5).ceil()
                idx = idx.clamp(0, in_size - 1).long().to(x.device, non_blocking=True)
                x = x.index_select(axis, idx)
            return x
        if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return torch.nn.functional.interpolate(x, size=out_hw, mode="bilinear",
                                                   align_corners=ctm == "align_corners")
        raise RtmwEdgeError(f"Resize mode {mode}/{ctm} is not supported by the torch-cuda backend")

    def _op_Pad(self, node, args, attrs):
        torch = _torch()
        x = args[0]
        pads = _ints(args[1]) if len(args) > 1 and args[1] is not None else list(attrs.get("pads", []))
        value = args[2].item() if len(args) > 2 and args[2] is not None else attrs.get("value", 0.0)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        n = x.dim()
        torch_pads = [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]
        if mode != "constant":
            return torch.nn.functional.pad(x, torch_pads[: 2 * (n - 2)], mode=mode)
        return torch.nn.functional.pad(x, torch_pads, value=value)

    # -- quantization (Q/DQ graphs from calibration): simulated in float, as TensorRT's reference does
    def _qparams(self, args, attrs, x):
        scale = args[1]
        zero = args[2] if len(args) > 2 and args[2] is not None else None
        axis = attrs.get("axis", 1)
        if scale.numel() > 1:
            shape = [1] * x.dim()
            shape[axis % x.dim()] = -1
            scale = scale.reshape(shape)
            zero = zero.reshape(shape) if zero is not None else None
        return scale, zero

    def _op_QuantizeLinear(self, node, args, attrs):
        torch = _torch()
        x = args[0]
        scale, zero = self._qparams(args, attrs, x)
        dtype = zero.dtype if zero is not None else torch.uint8
        lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
        z = zero.to(x.device).float() if zero is not None else 0.0
        return (torch.round(x / scale.to(x.device)) + z).clamp(lo, hi).to(dtype)

    def _op_DequantizeLinear(self, node, args, attrs):
        x = args[0]
        scale, zero = self._qparams(args, attrs, x)
        z = zero.to(x.device).float() if zero is not None else 0.0
        return (x.float() - z) * scale.to(x.device)


class TorchModuleGraph:
    """A registered PyTorch model (with the export's wrappers) run as a graph: `run({input}) -> outputs`."""

    def __init__(self, name: str, checkpoint=None, *, device="cpu", decode: bool = False, flip_test: bool = False,
                 topk: int = 1000, trust_checkpoint: bool = False, random_init: bool = False, seed: int = 0) -> None:
        torch = _torch()
        from ..export import (
            DECODED_OUTPUTS,
            DETECTOR_OUTPUTS,
            POSE_OUTPUTS,
            _detector_wrapper,
            _pose_wrapper,
            build_metadata,
        )
        from ..models import build_model
        from ..models.checkpoint import load_checkpoint
        from ..zoo import get_spec

        spec = get_spec(name)
        if checkpoint is None and not random_init:
            raise RtmwEdgeError("give a checkpoint (or random_init=True) to run the PyTorch model")
        torch.manual_seed(seed)
        model = build_model(spec)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, model_name=name, trust=trust_checkpoint)
        model = model.eval().float()
        if spec.is_pose:
            self.module = _pose_wrapper(model, spec, decode, flip_test)
            n_out = 3 if spec.task == "pose3d" else 2
            self.output_names = list((DECODED_OUTPUTS if decode else POSE_OUTPUTS)[:n_out])
            k = None
        else:
            self.module, k = _detector_wrapper(model, spec, topk)
            self.output_names = list(DETECTOR_OUTPUTS)
        self.device = torch.device(device)
        self.module = self.module.to(self.device).eval()
        self.input_names = ["input"]
        self.metadata = build_metadata(spec, outputs=self.output_names, batch="dynamic", decode=decode,
                                       flip_test=flip_test, precision="fp32", checkpoint_sha256=None, topk=k)
        self.input_size = spec.input_size

    def run(self, inputs: dict[str, object]) -> dict[str, object]:
        with _torch().no_grad():
            outs = self.module(inputs["input"])
        return dict(zip(self.output_names, outs))


class BatchShape(tuple):
    """(batch | None, C, H, W) that is also callable, `shape(n)` → (n, C, H, W): one engine object serves the
    host protocol (`engine.input_shape[2]`) and the DeviceEngine protocol (`engine.input_shape(batch)`)."""

    def __call__(self, batch: int) -> tuple[int, ...]:
        return (int(batch), *self[1:])


class _CudaArray:
    """A device pointer seen as an array by `torch.as_tensor` (CUDA array interface v3, no copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: str) -> None:
        self.__cuda_array_interface__ = {"shape": tuple(int(s) for s in shape), "typestr": np.dtype(dtype).str,
                                         "data": (int(ptr), False), "version": 3, "strides": None}


def _graph_io(model) -> tuple[str, tuple, dict[str, tuple], dict[str, str]]:
    """Input name, input dims and output dims/dtypes (None for dynamic dims) of an ONNX model."""
    inits = {i.name for i in model.graph.initializer}

    def dims(vi):
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in vi.type.tensor_type.shape.dim)

    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise RtmwEdgeError(f"the torch-cuda backend runs graphs with one input, this one has {len(inputs)}")
    outputs = {o.name: dims(o) for o in model.graph.output}
    dtypes = {o.name: _ONNX_DTYPES.get(o.type.tensor_type.elem_type, "float32") for o in model.graph.output}
    return inputs[0].name, dims(inputs[0]), outputs, dtypes


class TorchCudaEngine:
    """DeviceEngine on PyTorch-CUDA. `TorchCudaEngine(path)` runs an exported ONNX; `from_pytorch(name,
    checkpoint)` the registered PyTorch model."""

    graph_capturable = False  # eager PyTorch allocates: never inside a foreign CUDA-graph capture

    def __init__(self, path: str | Path | None = None, *, device: int = 0, max_batch: int = DEFAULT_MAX_BATCH,
                 allow_tf32: bool = False, graph=None, metadata: dict | None = None, name: str | None = None,
                 input_dims: tuple | None = None, **_ignored) -> None:
        torch = _torch()
        if not torch.cuda.is_available():
            raise RtmwEdgeError("the torch-cuda backend needs a CUDA build of PyTorch and a GPU "
                                "(torch.cuda.is_available() is False)")
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        self.torch_device = torch.device("cuda", device)
        self._output_dims: dict[str, tuple] = {}
        self._output_dtypes: dict[str, str] = {}
        if graph is None:
            import onnx

            if path is None:
                raise RtmwEdgeError("TorchCudaEngine needs an ONNX path (or a graph)")
            self.path = Path(path)
            model = onnx.load(str(self.path))
            self.metadata = read_metadata(model)
            self.input_name, dims, self._output_dims, self._output_dtypes = _graph_io(model)
            self.graph = OnnxTorchGraph(model, self.torch_device)
        else:
            self.path = Path(path or name or "model")
            self.graph, self.metadata = graph, metadata
            self.input_name = graph.input_names[0]
            dims = input_dims
            self._output_dtypes = {n: "float32" for n in graph.output_names}
        self.name = name or self.path.name
        self.output_names = list(self.graph.output_names)
        if dims is None or len(dims) != 4 or dims[2] is None or dims[3] is None:
            raise RtmwEdgeError(f"{self.name}: the GPU runtime needs a fixed input H×W, got {dims}")
        self._input_chw = (dims[1] or 3, dims[2], dims[3])
        fixed = dims[0]
        self.input_shape = BatchShape((fixed, *self._input_chw))
        self.min_batch = fixed or 1
        self.max_batch = fixed or int(max_batch)
        self._probe()

    @classmethod
    def from_pytorch(cls, name: str, checkpoint=None, *, device: int = 0, decode: bool = False,
                     flip_test: bool = False, random_init: bool = False, **kwargs) -> TorchCudaEngine:
        torch = _torch()
        graph = TorchModuleGraph(name, checkpoint, device=torch.device("cuda", device), decode=decode,
                                 flip_test=flip_test, random_init=random_init)
        w, h = graph.input_size
        return cls(None, device=device, graph=graph, metadata=graph.metadata, name=name,
                   input_dims=(None, 3, h, w), **kwargs)

    def _probe(self) -> None:
        """Output shapes for batch 1 and 2 (dynamic dims resolved by running zeros once)."""
        torch = _torch()
        shapes = {}
        for batch in sorted({self.min_batch, min(self.min_batch + 1, self.max_batch)}):
            x = torch.zeros((batch, *self._input_chw), device=self.torch_device)
            out = self.graph.run({self.input_name: x})
            shapes[batch] = {k: tuple(v.shape) for k, v in out.items()}
            self._output_dtypes.update({k: str(v.dtype).replace("torch.", "") for k, v in out.items()})
        torch.cuda.synchronize(self.torch_device)
        self._per_item: dict[str, tuple] = {}
        for name in self.output_names:
            first = shapes[min(shapes)][name]
            self._per_item[name] = first[1:]
            if len(shapes) == 2:
                second = shapes[max(shapes)][name]
                if second[0] != first[0] + 1:
                    raise RtmwEdgeError(f"{self.name}: output {name} does not scale with the batch")

    # -- DeviceEngine
    def output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        return (int(batch), *self._per_item[name])

    def output_dtype(self, name: str) -> str:
        return self._output_dtypes[name]

    def _check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise RtmwEdgeError(f"{self.name}: batch {batch} outside [{self.min_batch}, {self.max_batch}]")

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], stream: int, batch: int) -> None:
        torch = _torch()
        self._check_batch(batch)
        ext = torch.cuda.ExternalStream(int(stream), device=self.torch_device)
        with torch.cuda.stream(ext), torch.no_grad():
            x = torch.as_tensor(_CudaArray(inputs[self.input_name], self.input_shape(batch), "float32"),
                                device=self.torch_device)
            result = self.graph.run({self.input_name: x})
            for name, ptr in outputs.items():
                dst = torch.as_tensor(_CudaArray(ptr, self.output_shape(name, batch), self.output_dtype(name)),
                                      device=self.torch_device)
                dst.copy_(result[name])

    # -- host Engine
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Host arrays in and out (synchronous): the CPU pipeline with GPU inference (`--backend torch-cuda`
        outside the GPU pipeline, and the benchmark's "CPU pre/post-processing" column)."""
        torch = _torch()
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)
        out = self.graph.run({self.input_name: t})
        return {k: v.cpu().numpy() for k, v in out.items()}

    def close(self) -> None:
        self.graph = None


