// load_artifact: load a TorchScript archive exported by export-worker, print the extra
// files asked for, and run forward on a deterministic input.
//
//   load_artifact ARCHIVE_PATH [EXTRA_NAME ...] [--input N,M]
//
// Output (stdout), one record per line:
//   extra: NAME SIZE                        for every requested extra file
//   text: <content, escaped as below>       when that file is valid UTF-8 text without NULs
//   output_shape: D1 D2 ...
//   output: V1 V2 ...                       the flattened output, %.9g, row-major
// The input is torch::arange(N*M).reshape({N, M}).to(kFloat) / (N*M); N,M default to 2,4.
// Text is written with backslash escapes (\\, \n, \r, \t) so each record stays on one line.
// Errors go to stderr with exit status 1 (cannot load, or forward failed) or 2 (usage).

#include <torch/script.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr int kUsageError = 2;
constexpr int kLoadError = 1;

void usage(const char* prog) {
  std::cerr << "usage: " << prog << " ARCHIVE_PATH [EXTRA_NAME ...] [--input N,M]\n";
}

bool parse_shape(const std::string& text, int64_t& n, int64_t& m) {
  const auto comma = text.find(',');
  if (comma == std::string::npos) return false;
  try {
    std::size_t used_n = 0;
    std::size_t used_m = 0;
    const std::string a = text.substr(0, comma);
    const std::string b = text.substr(comma + 1);
    n = std::stoll(a, &used_n);
    m = std::stoll(b, &used_m);
    return used_n == a.size() && used_m == b.size() && n > 0 && m > 0;
  } catch (const std::exception&) {
    return false;
  }
}

// Valid UTF-8 with no NUL bytes: printed as text.
bool is_text(const std::string& data) {
  std::size_t i = 0;
  while (i < data.size()) {
    const auto c = static_cast<unsigned char>(data[i]);
    if (c == 0) return false;
    std::size_t extra = 0;
    if (c < 0x80) {
      extra = 0;
    } else if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
      extra = 1;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
    } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
      extra = 3;
    } else {
      return false;
    }
    if (i + extra >= data.size()) return false;  // truncated sequence
    for (std::size_t k = 1; k <= extra; ++k) {
      if ((static_cast<unsigned char>(data[i + k]) & 0xC0) != 0x80) return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string escape(const std::string& data) {
  std::string out;
  out.reserve(data.size());
  for (const char c : data) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(argv[0]);
    return kUsageError;
  }
  std::string path;
  std::vector<std::string> names;
  int64_t n = 2;
  int64_t m = 4;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--input") {
      if (i + 1 >= argc || !parse_shape(argv[i + 1], n, m)) {
        std::cerr << "error: --input needs N,M with positive integers\n";
        usage(argv[0]);
        return kUsageError;
      }
      ++i;
    } else if (arg == "-h" || arg == "--help") {
      usage(argv[0]);
      return 0;
    } else if (path.empty()) {
      path = arg;
    } else {
      names.push_back(arg);
    }
  }
  if (path.empty()) {
    usage(argv[0]);
    return kUsageError;
  }
  if (!std::ifstream(path, std::ios::binary).good()) {
    std::cerr << "error: cannot open archive " << path << "\n";
    return kLoadError;
  }

  // torch::jit::load fills the value of every key present in the map.
  std::unordered_map<std::string, std::string> extra_files;
  for (const auto& name : names) extra_files.emplace(name, std::string());

  torch::jit::Module module;
  try {
    module = torch::jit::load(path, torch::kCPU, extra_files);
  } catch (const c10::Error& exc) {
    std::cerr << "error: cannot load " << path << " as a TorchScript archive: " << exc.what_without_backtrace()
              << "\n";
    return kLoadError;
  } catch (const std::exception& exc) {
    std::cerr << "error: cannot load " << path << " as a TorchScript archive: " << exc.what() << "\n";
    return kLoadError;
  }
  module.eval();

  for (const auto& name : names) {
    const std::string& data = extra_files.at(name);
    std::cout << "extra: " << name << " " << data.size() << "\n";
    if (is_text(data)) std::cout << "text: " << escape(data) << "\n";
  }

  try {
    torch::NoGradGuard no_grad;
    const auto input = torch::arange(n * m).reshape({n, m}).to(torch::kFloat) / static_cast<double>(n * m);
    const auto result = module.forward({input});
    if (!result.isTensor()) {
      std::cerr << "error: forward returned " << result.tagKind() << ", not a tensor\n";
      return kLoadError;
    }
    const auto output = result.toTensor().detach().to(torch::kCPU).to(torch::kDouble).contiguous();
    std::cout << "output_shape:";
    for (const auto d : output.sizes()) std::cout << " " << d;
    std::cout << "\noutput:";
    const double* values = output.data_ptr<double>();
    char buf[32];
    for (int64_t i = 0; i < output.numel(); ++i) {
      std::snprintf(buf, sizeof buf, " %.9g", values[i]);
      std::cout << buf;
    }
    std::cout << "\n";
  } catch (const c10::Error& exc) {
    std::cerr << "error: forward failed on input of shape [" << n << ", " << m << "]: " << exc.what_without_backtrace()
              << "\n";
    return kLoadError;
  } catch (const std::exception& exc) {
    std::cerr << "error: forward failed on input of shape [" << n << ", " << m << "]: " << exc.what() << "\n";
    return kLoadError;
  }
  return 0;
}
