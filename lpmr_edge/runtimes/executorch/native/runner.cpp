/*
lpmr-edge native ExecuTorch runner: evaluates and times an ExecuTorch artifact on a device that has no
Python, no numpy and no torch. It links only the executorch wheel's C++ runtime libraries (libexecutorch,
the XNNPACK backend, the optimized and quantized kernels, the thread pool), found in ./lib beside it.

It speaks protocol 2 of lpmr_edge/devices/serve.py over its stdin/stdout, so the host's DeviceSession and
DeviceRuntime drive it unchanged; only the start differs (the host runs this binary, from the private directory
lpmr_edge/devices/binary.py copies its bundle to, instead of `python -c BOOTSTRAP`, and sends no source; its
arguments are ignored). Frames: a 4-byte big-endian length, a UTF-8 JSON header, then
header["bytes"] payload bytes; arrays are .npy (version 1-3, little-endian, C order). The runner speaks first;
every request gets one reply; {"error": "<one line>", "setup": bool} reports a failure and the runner carries on.

  hello (sent first)                    {op: "hello", protocol: 2, pid, machine, system, libc, executable,
                                         python: null, emulated (env LPMR_EDGE_EMULATED=1), runner: "native",
                                         executorch: <wheel version built against>}
  probe {modules, workdir}              -> {packages: {}, free_mb}  (modules ignored: it imports nothing)
  artifact {workdir} + manifest.json    -> {directory, missing: [files not yet on the device]}
                                           directory = <workdir>/artifacts/<sha256(manifest.json)[:16]>
  put {file} + content                  -> {}  written beside, sha256 checked against the manifest, renamed
  load {threads, loader, modules} + loader source
                                        -> {runtime: "executorch", version, threads, executed_precision, runner:
                                            "native", libraries: [shared objects loaded, paths], peak_rss_kb};
                                           threads null or 0: runtime_config.threads; the loader is not used
  run {tower} + .npy inputs             -> {batch_s: [...], batch, peak_rss_kb} + .npy float32 features
                                           (preceded by {"progress": i} after every batch)

Manifest fields read: files {name: sha256}, runtime ("executorch"), runtime_config {backend, method, threads,
executed_precision},
towers.<image|text> {file, inputs[0] {shape, dtype}}. `run` accepts float32/float64 inputs for a float32
tower and int64/int32 for an int64 one, checks the trailing dimensions against the manifest's input shape,
splits the rows into the tower's static batch (inputs[0].shape[0]; -1: one batch of all rows), zero-pads the
last batch, times each batch's execute() with a monotonic clock and returns the real rows' float32 outputs.
Peak RSS is getrusage(RUSAGE_SELF).ru_maxrss. End of input ends the runner (exit 0); an hour without any exchange
ends it (SIGALRM). As serve.py's server, it forks: the child serves, the started process supervises it, SIGKILLs
it when the host's end of stdin or stdout closes and the child has not ended 2 s later (mid-batch), and exits
with the child's status (128 + N if signal N ended it), also where it is its pid namespace's init.
Writes to fd 1 by libraries go to stderr: the protocol uses a private duplicate of the original stdout.
*/

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/platform/runtime.h>

#include <gnu/libc-version.h>
#include <link.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "json.h"
#include "npy.h"
#include "sha256.h"

#ifndef LPMR_EXECUTORCH_VERSION
#error "build with -DLPMR_EXECUTORCH_VERSION=\"x.y.z\" (the executorch wheel's version)"
#endif

// The wheel ships libexecutorch_threadpool.so but not its header: these are the two members used (see
// executorch/extension/threadpool/threadpool.h upstream).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::extension::module::Module;
using executorch::runtime::EValue;
using executorch::aten::ScalarType;

constexpr int kProtocol = 2;
constexpr unsigned kIdleSeconds = 3600;
constexpr size_t kChunk = 1 << 20;

struct Failure : std::runtime_error {
  bool setup;
  explicit Failure(const std::string& message, bool setup_problem = false)
      : std::runtime_error(message), setup(setup_problem) {}
};

long peak_rss_kb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

std::string expand_user(const std::string& path) {
  const char* home = std::getenv("HOME");
  if (home && (path == "~" || path.rfind("~/", 0) == 0)) return home + path.substr(1);
  return path;
}

bool is_file(const std::string& path) {
  struct stat info{};
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

void make_directories(const std::string& path) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
      throw Failure("cannot create " + prefix + " on the device: " + std::strerror(errno));
    if (slash == std::string::npos) return;
  }
}

double free_mb(std::string directory) {
  struct statvfs info{};
  while (statvfs(directory.c_str(), &info) != 0 && directory.size() > 1)
    directory = directory.substr(0, directory.find_last_of('/') == 0 ? 1 : directory.find_last_of('/'));
  return static_cast<double>(info.f_bavail) * info.f_frsize / 1e6;
}

// The shared objects this process has loaded (their paths as the dynamic loader opened them).
std::vector<Json> loaded_libraries() {
  std::vector<Json> paths;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* found) {
        if (info->dlpi_name && info->dlpi_name[0]) static_cast<std::vector<Json>*>(found)->emplace_back(info->dlpi_name);
        return 0;
      },
      &paths);
  return paths;
}

std::string sha256_of_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Sha256 digest;
  std::vector<char> buffer(kChunk);
  while (in.read(buffer.data(), buffer.size()) || in.gcount() > 0)
    digest.update(reinterpret_cast<const uint8_t*>(buffer.data()), static_cast<size_t>(in.gcount()));
  return digest.hex();
}

// ------------------------------------------------------------------------------------------ the runner

struct Tower {
  std::unique_ptr<Module> module;
  std::vector<int64_t> input_shape;  // from the manifest; shape[0] is the static batch (-1: dynamic)
  ScalarType dtype = ScalarType::Float;
};

class Runner {
 public:
  explicit Runner(int protocol_out) : out_(protocol_out) {}

  void serve() {
    struct utsname host{};
    uname(&host);
    char executable[PATH_MAX] = {0};
    ssize_t length = readlink("/proc/self/exe", executable, sizeof(executable) - 1);
    const char* emulated = std::getenv("LPMR_EDGE_EMULATED");
    send(Json::object({{"op", "hello"}, {"protocol", kProtocol}, {"pid", static_cast<double>(getpid())},
                       {"machine", host.machine}, {"system", host.sysname},
                       {"libc", std::string("glibc ") + gnu_get_libc_version()},
                       {"executable", std::string(executable, length > 0 ? length : 0)}, {"python", Json()},
                       {"emulated", emulated != nullptr && std::string(emulated) == "1"},
                       {"runner", "native"}, {"executorch", LPMR_EXECUTORCH_VERSION}}));
    Json header;
    while (read_header(header)) {
      size_t size = header.has("bytes") ? static_cast<size_t>(header["bytes"].number) : 0;
      std::string op = header.has("op") && header["op"].is_string() ? header["op"].text : "";
      Json reply;
      std::string payload;
      try {
        if (op == "put") {
          reply = put(header["file"].text, size);
        } else {
          std::string body = read_exact(size);
          if (op == "probe") reply = probe(header);
          else if (op == "artifact") reply = artifact(header, body);
          else if (op == "load") reply = load(header);
          else if (op == "run") reply = run(header["tower"].text, body, payload);
          else throw Failure("unknown request '" + op + "' (native runner, protocol 2)");
        }
      } catch (const Failure& error) {
        reply = Json::object({{"error", first_line(error.what())}, {"setup", error.setup}});
        payload.clear();
      } catch (const std::exception& error) {
        reply = Json::object({{"error", first_line(std::string("native runner: ") + error.what())}});
        payload.clear();
      }
      send(reply, payload);
    }
  }

 private:
  int out_;
  std::string directory_;
  Json manifest_;
  std::map<std::string, Tower> towers_;

  static std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

  std::string read_some(size_t size) {
    alarm(kIdleSeconds);
    std::string data(size, '\0');
    size_t got = 0;
    while (got < size) {
      ssize_t n = ::read(0, &data[got], size - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    data.resize(got);
    return data;
  }

  std::string read_exact(size_t size) {
    std::string data = read_some(size);
    if (data.size() != size) std::exit(0);  // the host closed the channel mid-frame: nothing to answer
    return data;
  }

  bool read_header(Json& header) {
    std::string prefix = read_some(4);
    if (prefix.empty()) return false;
    if (prefix.size() != 4) std::exit(0);
    auto byte = [&](int i) { return static_cast<uint32_t>(static_cast<uint8_t>(prefix[i])); };
    header = Json::parse(read_exact(byte(0) << 24 | byte(1) << 16 | byte(2) << 8 | byte(3)));
    return true;
  }

  void write_all(const std::string& data) {
    alarm(kIdleSeconds);
    for (size_t done = 0; done < data.size();) {
      ssize_t n = ::write(out_, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) std::exit(0);  // the host is gone
      done += static_cast<size_t>(n);
    }
  }

  void send(Json header, const std::string& payload = "") {
    header.set("bytes", static_cast<double>(payload.size()));
    std::string text = header.dump();
    uint32_t n = static_cast<uint32_t>(text.size());
    std::string prefix{static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                       static_cast<char>(n)};
    write_all(prefix + text + payload);
  }

  Json probe(const Json& header) {
    return Json::object({{"packages", Json::object({})}, {"free_mb", free_mb(expand_user(header["workdir"].text))}});
  }

  Json artifact(const Json& header, const std::string& manifest_json) {
    std::string workdir = expand_user(header["workdir"].text);
    manifest_ = Json::parse(manifest_json);
    towers_.clear();
    directory_ = workdir + "/artifacts/" + Sha256::of(manifest_json).substr(0, 16);
    make_directories(directory_);
    std::string partial = directory_ + "/.manifest.json.part";
    {
      std::ofstream out(partial, std::ios::binary);
      out << manifest_json;
      if (!out.flush()) throw disk_problem("manifest.json", workdir);
    }
    std::rename(partial.c_str(), (directory_ + "/manifest.json").c_str());
    std::vector<Json> missing;
    for (const auto& [name, digest] : manifest_["files"].members) {
      if (name.empty() || name[0] == '/' || ("/" + name + "/").find("/../") != std::string::npos)
        throw Failure("the manifest lists a file outside the artifact: " + name);
      std::string path = directory_ + "/" + name;
      if (!is_file(path) || sha256_of_file(path) != digest.text) missing.emplace_back(name);
    }
    return Json::object({{"directory", directory_}, {"missing", Json::array(missing)}});
  }

  Failure disk_problem(const std::string& what, const std::string& workdir) {
    if (errno == ENOSPC || errno == EDQUOT)
      return Failure("the device is out of disk space in " + workdir + " (" + what + ", " +
                     std::to_string(free_mb(workdir)) + " MB free); free space there or choose another device "
                     "workdir (?workdir=DIR)");
    return Failure("cannot write " + what + " in " + workdir + " on the device: " + std::strerror(errno));
  }

  Json put(const std::string& name, size_t size) {
    if (directory_.empty() || !manifest_["files"].has(name)) {
      discard(size);
      throw Failure(name + " is not a file of the announced artifact");
    }
    std::string target = directory_ + "/" + name;
    make_directories(target.substr(0, target.find_last_of('/')));
    std::string partial = target.substr(0, target.find_last_of('/') + 1) + "." +
                          target.substr(target.find_last_of('/') + 1) + ".part";
    Sha256 digest;
    FILE* file = std::fopen(partial.c_str(), "wb");
    size_t remaining = size;
    bool written = file != nullptr;
    while (remaining) {
      std::string chunk = read_exact(std::min(kChunk, remaining));
      remaining -= chunk.size();
      digest.update(reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size());
      written = written && std::fwrite(chunk.data(), 1, chunk.size(), file) == chunk.size();
    }
    written = written && std::fflush(file) == 0 && fsync(fileno(file)) == 0;
    if (file) std::fclose(file);
    if (!written) {
      Failure problem = disk_problem(name + ", " + std::to_string(size / 1000000.0) + " MB", directory_);
      std::remove(partial.c_str());
      throw problem;
    }
    std::string expected = manifest_["files"][name].text;
    if (digest.hex() != expected) {
      std::remove(partial.c_str());
      throw Failure(name + " arrived with sha256 " + digest.hex().substr(0, 12) + "…, the manifest says " +
                    expected.substr(0, 12) + "…: the transfer was corrupted");
    }
    std::rename(partial.c_str(), target.c_str());
    return Json::object({});
  }

  void discard(size_t size) {
    while (size) size -= read_exact(std::min(kChunk, size)).size();
  }

  Json load(const Json& header) {
    if (directory_.empty()) throw Failure("no artifact was announced before load");
    std::string missing;
    for (const auto& entry : manifest_["files"].members)
      if (!is_file(directory_ + "/" + entry.first)) missing += (missing.empty() ? "" : ", ") + entry.first;
    if (!missing.empty()) throw Failure("the artifact is incomplete on the device (missing " + missing + ")");
    if (manifest_["runtime"].text != "executorch")
      throw Failure("the native runner runs executorch artifacts, not '" + manifest_["runtime"].text + "'");
    const Json& config = manifest_["runtime_config"];
    if (executorch::runtime::get_backend_class(config["backend"].text.c_str()) == nullptr)
      throw Failure("the native runner's executorch libraries have no " + config["backend"].text +
                    "; copy libexecutorch_backend_xnnpack.so beside it", true);
    const Json* asked = header.has("threads") ? &header["threads"] : nullptr;
    int threads = asked && asked->is_number() && asked->number > 0 ? static_cast<int>(asked->number)
                                                                   : static_cast<int>(config["threads"].number);
    auto* pool = executorch::extension::threadpool::get_threadpool();
    if (pool->get_thread_count() != static_cast<size_t>(threads)) pool->_unsafe_reset_threadpool(threads);
    towers_.clear();
    for (const char* name : {"image", "text"}) {
      const Json& entry = manifest_["towers"][name];
      Tower tower;
      tower.module = std::make_unique<Module>(directory_ + "/" + entry["file"].text, Module::LoadMode::Mmap);
      auto error = tower.module->load_method(config["method"].text);
      if (error != executorch::runtime::Error::Ok)
        throw Failure(std::string("executorch ") + LPMR_EXECUTORCH_VERSION + " (native runner) cannot load the " +
                      name + " tower (" + executorch::runtime::to_string(error) + ")");
      const Json& input = entry["inputs"].items.at(0);
      for (const Json& dim : input["shape"].items) tower.input_shape.push_back(static_cast<int64_t>(dim.number));
      if (input["dtype"].text == "int64") tower.dtype = ScalarType::Long;
      else if (input["dtype"].text != "float32") throw Failure("unsupported tower input dtype " + input["dtype"].text);
      towers_[name] = std::move(tower);
    }
    return Json::object({{"runtime", "executorch"}, {"version", LPMR_EXECUTORCH_VERSION},
                         {"threads", static_cast<double>(pool->get_thread_count())},
                         {"executed_precision", config["executed_precision"]}, {"runner", "native"},
                         {"libraries", Json::array(loaded_libraries())}, {"peak_rss_kb", static_cast<double>(peak_rss_kb())}});
  }

  Json run(const std::string& name, const std::string& inputs_npy, std::string& payload) {
    auto found = towers_.find(name);
    if (found == towers_.end()) throw Failure("no loaded " + name + " tower (load the artifact first)");
    Tower& tower = found->second;
    npy::Array inputs = npy::decode_npy(inputs_npy);
    std::vector<int64_t> expected(tower.input_shape.begin() + 1, tower.input_shape.end());
    if (inputs.shape.size() != tower.input_shape.size() ||
        !std::equal(expected.begin(), expected.end(), inputs.shape.begin() + 1))
      throw Failure("the " + name + " inputs do not have the shape the artifact takes (N" +
                    Json::array(std::vector<Json>(expected.begin(), expected.end())).dump() + ")");
    int64_t rows = inputs.rows();
    if (rows == 0) throw Failure("no inputs to run");
    int64_t batch = tower.input_shape[0] == -1 ? rows : tower.input_shape[0];
    size_t width = 1;
    for (int64_t dim : expected) width *= static_cast<size_t>(dim);
    size_t row_bytes = width * (tower.dtype == ScalarType::Float ? 4 : 8);
    std::vector<uint8_t> buffer(static_cast<size_t>(batch) * row_bytes);
    std::vector<executorch::aten::SizesType> sizes{static_cast<executorch::aten::SizesType>(batch)};
    for (int64_t dim : expected) sizes.push_back(static_cast<executorch::aten::SizesType>(dim));
    std::vector<float> features;
    std::vector<int64_t> feature_shape{rows};
    std::vector<Json> seconds;
    const std::string& method = manifest_["runtime_config"]["method"].text;
    for (int64_t start = 0; start < rows; start += batch) {
      int64_t real = std::min(batch, rows - start);
      std::fill(buffer.begin(), buffer.end(), 0);
      for (int64_t row = 0; row < real; ++row)
        npy::convert_row(inputs, start + row, width, tower.dtype, buffer.data() + row * row_bytes);
      auto tensor = executorch::extension::from_blob(buffer.data(), sizes, tower.dtype);
      auto began = std::chrono::steady_clock::now();
      auto result = tower.module->execute(method, {EValue(*tensor)});
      std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - began;
      if (!result.ok())
        throw Failure("the " + name + " tower failed on the device (" +
                      executorch::runtime::to_string(result.error()) + ")");
      const auto& output = result->at(0).toTensor();
      if (output.scalar_type() != ScalarType::Float) throw Failure("the " + name + " tower's output is not float32");
      size_t per_row = static_cast<size_t>(output.numel() / output.size(0));
      if (start == 0)
        for (int dim = 1; dim < output.dim(); ++dim) feature_shape.push_back(output.size(dim));
      const float* values = output.const_data_ptr<float>();
      features.insert(features.end(), values, values + real * per_row);
      seconds.emplace_back(elapsed.count());
      send(Json::object({{"progress", static_cast<double>(seconds.size())}}));
    }
    payload = npy::encode_npy_float32(features, feature_shape);
    return Json::object({{"batch_s", Json::array(seconds)}, {"batch", static_cast<double>(batch)},
                         {"peak_rss_kb", static_cast<double>(peak_rss_kb())}});
  }
};

// Fork: the child returns and serves; this process supervises it until it ends (see the header comment).
void supervise(int grace_ms) {
  int alive[2];  // the child holds the writer: end of file means it has ended
  if (pipe(alive) != 0) return;
  pid_t server = fork();
  if (server <= 0) {  // the child, or no fork: serve unsupervised
    close(alive[0]);
    return;
  }
  close(alive[1]);
  pollfd channels[3] = {{0, 0, 0}, {1, 0, 0}, {alive[0], POLLIN, 0}};  // hang-ups are always reported
  while (poll(channels, 3, -1) < 0 && errno == EINTR) {
  }
  pollfd ended{alive[0], POLLIN, 0};
  if (!channels[2].revents && poll(&ended, 1, grace_ms) == 0) kill(server, SIGKILL);
  int status = 0;
  while (waitpid(server, &status, 0) < 0 && errno == EINTR) {
  }
  _exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
}

}  // namespace

int main() {
  supervise(2000);
  int protocol_out = dup(1);
  dup2(2, 1);  // anything a library prints goes to stderr, never into a frame
  executorch::runtime::runtime_init();
  Runner(protocol_out).serve();
  return 0;
}
