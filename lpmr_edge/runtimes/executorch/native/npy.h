// .npy arrays for the native runner's protocol (serve.py's encode_array/decode_array): version 1-3 headers,
// little-endian float32/float64/int32/int64 in C order read; float32 written as version 1.0.
#pragma once

#include <executorch/runtime/core/exec_aten/exec_aten.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

using executorch::aten::ScalarType;

struct Array {
  std::string descr;  // e.g. "<f4"
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t item_size = 0;
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
};

std::string header_field(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) throw std::runtime_error("the .npy header has no '" + key + "'");
  at = header.find_first_not_of(' ', at + key.size() + 3);
  char close = header[at] == '\'' ? '\'' : header[at] == '(' ? ')' : ',';
  size_t end = header.find(close, at + 1);
  return header.substr(at + (close == ',' ? 0 : 1), end - at - (close == ',' ? 0 : 1));
}

Array decode_npy(const std::string& bytes) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error("the inputs are not a .npy array");
  auto byte = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
  bool v1 = byte(6) == 1;
  size_t length = v1 ? byte(8) | byte(9) << 8 : byte(8) | byte(9) << 8 | byte(10) << 16 | size_t(byte(11)) << 24;
  size_t start = v1 ? 10 : 12;
  if (start + length > bytes.size()) throw std::runtime_error("the .npy header is truncated");
  std::string header = bytes.substr(start, length);
  Array array;
  array.descr = header_field(header, "descr");
  if (header_field(header, "fortran_order") != "False") throw std::runtime_error("the inputs are not in C order");
  std::string dims = header_field(header, "shape");
  for (size_t at = 0; (at = dims.find_first_of("0123456789", at)) != std::string::npos;) {
    size_t end = dims.find_first_not_of("0123456789", at);
    array.shape.push_back(std::stoll(dims.substr(at, end - at)));
    at = end;
  }
  static const std::map<std::string, size_t> sizes{{"<f4", 4}, {"<f8", 8}, {"<i4", 4}, {"<i8", 8}};
  auto found = sizes.find(array.descr);
  if (found == sizes.end()) throw std::runtime_error("unsupported input dtype " + array.descr + " (float32/64 or int32/64)");
  array.item_size = found->second;
  size_t count = 1;
  for (int64_t dim : array.shape) count *= static_cast<size_t>(dim);
  if (start + length + count * array.item_size != bytes.size()) throw std::runtime_error("the .npy payload has the wrong size");
  array.data = reinterpret_cast<const uint8_t*>(bytes.data()) + start + length;
  return array;
}

std::string encode_npy_float32(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t dim : shape) dims += std::to_string(dim) + ", ";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY\x01";
  out += '\0';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return out;
}

// Row `row` of `array` converted into `out` as `target` (float32 or int64), `width` elements: one copy when the
// array already holds that type, else element by element.
void convert_row(const Array& array, int64_t row, size_t width, ScalarType target, uint8_t* out) {
  const uint8_t* source = array.data + row * width * array.item_size;
  const bool to_float = target == ScalarType::Float;
  if (array.descr == (to_float ? "<f4" : "<i8")) {
    std::memcpy(out, source, width * array.item_size);
    return;
  }
  const char kind = array.descr[1];  // 'f' or 'i'
  for (size_t i = 0; i < width; ++i) {
    const uint8_t* item = source + i * array.item_size;
    double as_double = 0;
    int64_t as_int = 0;
    if (kind == 'f' && array.item_size == 4) { float v; std::memcpy(&v, item, 4); as_double = v; as_int = static_cast<int64_t>(v); }
    if (kind == 'f' && array.item_size == 8) { std::memcpy(&as_double, item, 8); as_int = static_cast<int64_t>(as_double); }
    if (kind == 'i' && array.item_size == 4) { int32_t v; std::memcpy(&v, item, 4); as_int = v; as_double = v; }
    if (kind == 'i' && array.item_size == 8) { std::memcpy(&as_int, item, 8); as_double = static_cast<double>(as_int); }
    if (to_float) {
      float v = static_cast<float>(as_double);
      std::memcpy(out + i * 4, &v, 4);
    } else {
      std::memcpy(out + i * 8, &as_int, 8);
    }
  }
}

}  // namespace npy
