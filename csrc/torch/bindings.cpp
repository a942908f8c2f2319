// Registration only: every function bound here is implemented in a topic file of csrc/torch or core.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include "core/topology/generators.h"
#include "torch/choco_store.h"
#include "torch/codec_ops.h"
#include "torch/errors.h"
#include "torch/gossip_engine.h"
#include "torch/mailbox.h"
#include "torch/saddle_backend.h"
#include "torch/topology_ops.h"

namespace py = pybind11;
using saddle::topology::Topology;
using saddle::topology::parse_weights;
namespace st = saddle::torch_ext;

namespace {

using TopologyPtr = std::shared_ptr<Topology>;

// Sets the Python error to an instance of saddle_torch.errors.<cls>(message, **fields).
void set_error(const char* cls, const char* message, const py::dict& fields) {
  try {
    py::object type = py::module_::import("saddle_torch.errors").attr(cls);
    py::object error = type(message, **fields);
    PyErr_SetObject(type.ptr(), error.ptr());
  } catch (const py::error_already_set&) {  // the interpreter is finalizing: the message still goes out
    PyErr_SetString(PyExc_RuntimeError, message);
  }
}

py::object peer_or_none(int peer) { return peer < 0 ? py::none() : py::object(py::int_(peer)); }

void set_python_error(const st::Failure& failure) {
  py::dict fields;
  fields["peer"] = peer_or_none(failure.peer);
  if (failure.corrupt) {
    set_error("CorruptMessageError", failure.what.c_str(), fields);
    return;
  }
  fields["aborted"] = failure.aborted;
  set_error("PeerError", failure.what.c_str(), fields);
}

// Every project exception becomes its saddle_torch.errors class (all under SaddleError), with the
// structured fields the elastic runtime reads (PeerError.peer, .aborted) instead of message text.
void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const st::PeerError& e) {
    py::dict fields;
    fields["peer"] = peer_or_none(e.peer());
    fields["aborted"] = e.aborted();
    set_error("PeerError", e.what(), fields);
  } catch (const st::CorruptMessageFrom& e) {
    py::dict fields;
    fields["peer"] = peer_or_none(e.peer());
    set_error("CorruptMessageError", e.what(), fields);
  } catch (const saddle::codec::CorruptMessage& e) {
    set_error("CorruptMessageError", e.what(), py::dict());
  } catch (const saddle::Error& e) {
    set_error("InternalError", e.what(), py::dict());
  }
}

template <typename F>
TopologyPtr make(F&& f) {
  return std::make_shared<Topology>(f());
}

void bind_topology(py::module_& m) {
  py::class_<Topology, TopologyPtr>(m, "Topology")
      .def_property_readonly("name", &Topology::name)
      .def_property_readonly("size", &Topology::size)
      .def_property_readonly("period", &Topology::period)
      .def_property_readonly("symmetric", &Topology::symmetric)
      .def("neighbors", &Topology::neighbors, py::arg("rank"), py::arg("step") = 0)
      .def("in_edges", &st::in_edges, py::arg("rank"), py::arg("step") = 0)
      .def("out_neighbors",
           [](const Topology& t, int rank, int64_t step) { return t.row(rank, step).out; },
           py::arg("rank"), py::arg("step") = 0)
      .def("self_weight",
           [](const Topology& t, int rank, int64_t step) { return t.row(rank, step).self_weight; },
           py::arg("rank"), py::arg("step") = 0)
      .def("mixing_matrix", &st::mixing_matrix_tensor, py::arg("step") = 0)
      .def("spectral_gap", &Topology::spectral_gap);

  namespace tp = saddle::topology;
  m.def("ring", [](int n, const std::string& w) { return make([&] { return tp::ring(n, parse_weights(w)); }); });
  m.def("torus", [](int r, int c, const std::string& w) {
    return make([&] { return tp::torus(r, c, parse_weights(w)); });
  });
  m.def("exponential",
        [](int n, const std::string& w) { return make([&] { return tp::exponential(n, parse_weights(w)); }); });
  m.def("one_peer_exponential", [](int n) { return make([&] { return tp::one_peer_exponential(n); }); });
  m.def("fully_connected", [](int n, const std::string& w) {
    return make([&] { return tp::fully_connected(n, parse_weights(w)); });
  });
  m.def("star", [](int n, const std::string& w) { return make([&] { return tp::star(n, parse_weights(w)); }); });
  m.def("random_regular", [](int n, int d, uint64_t seed, const std::string& w) {
    return make([&] { return tp::random_regular(n, d, seed, parse_weights(w)); });
  });
  m.def("from_undirected", [](const std::string& name, const std::vector<std::vector<int>>& adj,
                              const std::string& w) {
    return make([&] { return tp::from_undirected(name, adj, parse_weights(w)); });
  });
  m.def("from_matrix", &st::topology_from_tensor);
}

void bind_engine(py::module_& m) {
  py::class_<st::Round, std::shared_ptr<st::Round>>(m, "Round").def("done", &st::Round::done);

  // Completes `future` (a torch.futures.Future) with `value` once `rounds` rounds started with it
  // have been finished by the engine's worker; their first failure becomes the future's error.
  py::class_<st::Completion, std::shared_ptr<st::Completion>>(m, "Completion")
      .def(py::init([](const py::object& future, const py::object& value, int rounds) {
             auto wrapper = future.cast<std::shared_ptr<torch::jit::PythonFutureWrapper>>();
             // The value as Future.set_result stores it, so the future's consumers read it unchanged.
             c10::IValue v = torch::jit::toIValue(value, c10::PyObjectType::get());
             // The future's error is the Python saddle_torch error with its fields, so that backward()
             // raises it with its type (torch restores a python_error as the original exception;
             // other errors become RuntimeError). Called on the engine's worker, which takes the GIL.
             auto make_error = [](const st::Failure& failure) {
               py::gil_scoped_acquire gil;
               set_python_error(failure);
               python_error err;
               err.persist();
               return std::make_exception_ptr(std::move(err));
             };
             return std::make_shared<st::Completion>(wrapper->fut, std::move(v), rounds, make_error);
           }),
           py::arg("future"), py::arg("value"), py::arg("rounds"));

  py::class_<st::GossipEngine, std::shared_ptr<st::GossipEngine>>(m, "GossipEngine")
      .def(py::init([](const c10::intrusive_ptr<c10d::Backend>& backend, TopologyPtr topology,
                       double timeout_seconds) {
             st::EngineOptions options;
             options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000.0));
             return std::make_shared<st::GossipEngine>(backend, std::move(topology), options);
           }),
           py::arg("backend"), py::arg("topology"), py::arg("timeout_seconds"))
      .def_property_readonly("rank", &st::GossipEngine::rank)
      .def_property_readonly("size", &st::GossipEngine::size)
      .def("set_topology", &st::GossipEngine::set_topology)
      .def("topology", &st::GossipEngine::topology)
      .def(
          "start",
          [](st::GossipEngine& e, const at::Tensor& x, int64_t step, double gamma, bool snapshot, bool keep_received,
             std::vector<at::Tensor> scatter, std::shared_ptr<st::Completion> completion) {
            return e.start(x, st::RoundOptions{step, gamma, snapshot, keep_received}, std::move(scatter),
                           std::move(completion));
          },
          py::arg("tensor"), py::arg("step"), py::arg("gamma") = 1.0, py::arg("snapshot") = false,
          py::arg("keep_received") = false, py::arg("scatter") = std::vector<at::Tensor>{},
          py::arg("completion") = nullptr, py::call_guard<py::gil_scoped_release>())
      .def(
          "start_compressed",
          [](st::GossipEngine& e, const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& s, int64_t step,
             double gamma, const st::CodecPtr& codec, bool error_feedback, uint64_t name_hash,
             std::vector<at::Tensor> scatter, std::shared_ptr<st::Completion> completion) {
            return e.start_compressed(x, x_hat, s, st::RoundOptions{step, gamma, false, false},
                                      st::CompressionOptions{codec, error_feedback, name_hash}, std::move(scatter),
                                      std::move(completion));
          },
          py::arg("tensor"), py::arg("x_hat"), py::arg("s"), py::arg("step"), py::arg("gamma"), py::arg("codec"),
          py::arg("error_feedback"), py::arg("name_hash"), py::arg("scatter") = std::vector<at::Tensor>{},
          py::arg("completion") = nullptr, py::call_guard<py::gil_scoped_release>())
      .def("exchange", &st::GossipEngine::exchange, py::arg("sends"), py::arg("recvs"),
           py::call_guard<py::gil_scoped_release>())
      .def("wait", &st::GossipEngine::wait, py::call_guard<py::gil_scoped_release>())
      .def("received", &st::GossipEngine::received, py::call_guard<py::gil_scoped_release>())
      .def("finish", &st::GossipEngine::finish, py::call_guard<py::gil_scoped_release>())
      .def("close", &st::GossipEngine::close, py::call_guard<py::gil_scoped_release>(),
           "Stop the worker and release the process group (idempotent); later rounds raise")
      .def("abort", &st::GossipEngine::abort, py::arg("reason"), py::call_guard<py::gil_scoped_release>(),
           "Give up on every round in flight and refuse new ones (PeerError carrying reason)")
      .def("broken", &st::GossipEngine::broken, "Whether a round failed or abort() was called")
      .def("stats",
           [](const st::GossipEngine& e) {
             const st::EngineStats s = e.stats();
             py::dict d;
             d["bytes_sent"] = s.bytes_sent;
             d["bytes_received"] = s.bytes_received;
             d["rounds"] = s.rounds;
             d["wait_seconds"] = s.wait_seconds;
             d["transfer_seconds"] = s.transfer_seconds;
             return d;
           })
      .def("reset_stats", &st::GossipEngine::reset_stats);
}

void bind_mailbox(py::module_& m) {
  using py::arg;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  py::class_<st::Mailbox, std::shared_ptr<st::Mailbox>>(m, "Mailbox")
      .def(py::init([](const c10::intrusive_ptr<c10d::Backend>& backend, double timeout_seconds) {
             return std::make_shared<st::Mailbox>(
                 backend, std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000.0)));
           }),
           arg("backend"), arg("timeout_seconds"))
      .def("send", &st::Mailbox::send, arg("peer"), arg("tensor"), nogil)
      .def("recv", &st::Mailbox::recv, arg("peer"), arg("tensor"), nogil)
      .def("sent", &st::Mailbox::sent, arg("peer"), nogil)
      .def("received", &st::Mailbox::received, arg("peer"), nogil)
      .def("wait_received", &st::Mailbox::wait_received, arg("peer"), nogil)
      .def("close", &st::Mailbox::close, nogil)
      .def_property_readonly("bytes_sent", &st::Mailbox::bytes_sent)
      .def_property_readonly("bytes_received", &st::Mailbox::bytes_received);
}

void bind_codecs(py::module_& m) {
  using py::arg;
  namespace codec = saddle::codec;
  py::class_<codec::Codec, st::CodecPtr>(m, "Codec")
      .def_property_readonly("name", [](const codec::Codec& c) { return codec::codec_name(c.spec().id); })
      .def_property_readonly("unbiased", &codec::Codec::unbiased)
      .def_property_readonly("bits", [](const codec::Codec& c) { return c.spec().bits; })
      .def_property_readonly("ratio", [](const codec::Codec& c) { return c.spec().ratio; })
      .def_property_readonly("block_size", [](const codec::Codec& c) { return c.spec().block_size; })
      .def("encoded_bytes", &codec::Codec::encoded_bytes, arg("n"))
      .def("__repr__", &st::codec_repr);
  m.def("make_codec", &st::make_codec, arg("name"), arg("bits"), arg("ratio"), arg("block_size"));
  // encode/decode are operators: torch.ops.saddle.codec_* (ops_library.cpp).
}

void bind_choco(py::module_& m) {
  using st::ChocoStore;
  py::class_<ChocoStore, std::shared_ptr<ChocoStore>>(m, "ChocoStore")
      .def(py::init<>())
      .def("has", &ChocoStore::has, py::arg("name"))
      .def("get_or_zeros", &ChocoStore::get_or_zeros, py::arg("name"), py::arg("numel"))
      .def("get", &ChocoStore::get, py::arg("name"))
      .def("set", &ChocoStore::set, py::arg("name"), py::arg("x_hat"), py::arg("s"))
      .def("erase", &ChocoStore::erase, py::arg("name"))
      .def("clear", &ChocoStore::clear)
      .def("names", &ChocoStore::names);
  m.def("name_hash", &st::name_hash, py::arg("name"));
  m.def("message_seed", &st::message_seed, py::arg("name_hash"), py::arg("step"), py::arg("sender"));
}

void bind_backend(py::module_& m) {
  // The base class c10d::Backend is registered by torch.distributed (imported before this module).
  py::class_<st::SaddleBackend, c10d::Backend, c10::intrusive_ptr<st::SaddleBackend>>(m, "SaddleBackend")
      .def(py::init([](const c10::intrusive_ptr<c10d::Backend>& inner, double timeout_seconds) {
             return c10::make_intrusive<st::SaddleBackend>(inner, timeout_seconds);
           }),
           py::arg("inner"), py::arg("timeout_seconds"))
      .def_property_readonly("timeout_seconds", &st::SaddleBackend::timeout_seconds);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "saddle_torch native extension (import it only through saddle_torch._ops)";
  py::register_exception_translator(&translate);
  bind_topology(m);
  bind_engine(m);
  bind_mailbox(m);
  bind_codecs(m);
  bind_choco(m);
  bind_backend(m);
}
