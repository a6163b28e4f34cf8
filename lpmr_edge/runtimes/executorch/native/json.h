// A small JSON value for the native runner's protocol headers and the artifact manifest: parse (RFC 8259,
// \uXXXX escapes with surrogate pairs decoded to UTF-8) and dump (numbers that are whole print as integers).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };
  using Member = std::pair<std::string, Json>;

  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0;
  std::string text;
  std::vector<Json> items;
  std::vector<Member> members;  // in order, as the manifest lists them

  Json() = default;
  Json(bool value) : kind(Kind::Bool), boolean(value) {}
  Json(int value) : kind(Kind::Number), number(value) {}
  Json(long value) : kind(Kind::Number), number(static_cast<double>(value)) {}
  Json(double value) : kind(Kind::Number), number(value) {}
  Json(const char* value) : kind(Kind::String), text(value) {}
  Json(std::string value) : kind(Kind::String), text(std::move(value)) {}

  static Json object(std::initializer_list<Member> values) {
    Json json;
    json.kind = Kind::Object;
    json.members.assign(values.begin(), values.end());
    return json;
  }
  static Json array(std::vector<Json> values) {
    Json json;
    json.kind = Kind::Array;
    json.items = std::move(values);
    return json;
  }

  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Number; }

  bool has(const std::string& key) const {
    for (const Member& member : members)
      if (member.first == key) return true;
    return false;
  }

  const Json& operator[](const std::string& key) const {
    for (const Member& member : members)
      if (member.first == key) return member.second;
    throw std::runtime_error("no '" + key + "' in a JSON object");
  }

  void set(const std::string& key, Json value) {
    for (Member& member : members)
      if (member.first == key) {
        member.second = std::move(value);
        return;
      }
    members.emplace_back(key, std::move(value));
  }

  static Json parse(const std::string& text) {
    size_t at = 0;
    Json value = Parser{text, at}.value();
    Parser{text, at}.skip_space();
    if (at != text.size()) throw std::runtime_error("trailing characters after JSON");
    return value;
  }

  std::string dump() const {
    std::string out;
    dump_to(out);
    return out;
  }

 private:
  struct Parser {
    const std::string& s;
    size_t& at;

    [[noreturn]] void fail(const char* what) const {
      throw std::runtime_error(std::string("bad JSON (") + what + " at offset " + std::to_string(at) + ")");
    }
    void skip_space() {
      while (at < s.size() && (s[at] == ' ' || s[at] == '\n' || s[at] == '\r' || s[at] == '\t')) ++at;
    }
    bool take(const char* word) {
      size_t n = std::char_traits<char>::length(word);
      if (s.compare(at, n, word) != 0) return false;
      at += n;
      return true;
    }
    Json value() {
      skip_space();
      if (at >= s.size()) fail("unexpected end");
      char c = s[at];
      if (c == '{') return object_value();
      if (c == '[') return array_value();
      if (c == '"') return Json(string_value());
      if (take("true")) return Json(true);
      if (take("false")) return Json(false);
      if (take("null")) return Json();
      if (c == '-' || (c >= '0' && c <= '9')) {
        const char* begin = s.c_str() + at;
        char* end = nullptr;
        double number = std::strtod(begin, &end);
        at += static_cast<size_t>(end - begin);
        return Json(number);
      }
      fail("unexpected character");
    }
    Json object_value() {
      Json json;
      json.kind = Kind::Object;
      ++at;
      skip_space();
      if (at < s.size() && s[at] == '}') return ++at, json;
      while (true) {
        skip_space();
        if (at >= s.size() || s[at] != '"') fail("expected a key");
        std::string key = string_value();
        skip_space();
        if (at >= s.size() || s[at++] != ':') fail("expected ':'");
        json.members.emplace_back(std::move(key), value());
        skip_space();
        if (at < s.size() && s[at] == ',') { ++at; continue; }
        if (at < s.size() && s[at] == '}') return ++at, json;
        fail("expected ',' or '}'");
      }
    }
    Json array_value() {
      Json json;
      json.kind = Kind::Array;
      ++at;
      skip_space();
      if (at < s.size() && s[at] == ']') return ++at, json;
      while (true) {
        json.items.push_back(value());
        skip_space();
        if (at < s.size() && s[at] == ',') { ++at; continue; }
        if (at < s.size() && s[at] == ']') return ++at, json;
        fail("expected ',' or ']'");
      }
    }
    unsigned hex4() {
      if (at + 4 > s.size()) fail("short \\u escape");
      unsigned code = static_cast<unsigned>(std::stoul(s.substr(at, 4), nullptr, 16));
      at += 4;
      return code;
    }
    static void append_utf8(std::string& out, unsigned code) {
      if (code < 0x80) {
        out += static_cast<char>(code);
      } else if (code < 0x800) {
        out += static_cast<char>(0xC0 | code >> 6);
        out += static_cast<char>(0x80 | (code & 0x3F));
      } else if (code < 0x10000) {
        out += static_cast<char>(0xE0 | code >> 12);
        out += static_cast<char>(0x80 | (code >> 6 & 0x3F));
        out += static_cast<char>(0x80 | (code & 0x3F));
      } else {
        out += static_cast<char>(0xF0 | code >> 18);
        out += static_cast<char>(0x80 | (code >> 12 & 0x3F));
        out += static_cast<char>(0x80 | (code >> 6 & 0x3F));
        out += static_cast<char>(0x80 | (code & 0x3F));
      }
    }
    std::string string_value() {
      std::string out;
      ++at;
      while (at < s.size() && s[at] != '"') {
        char c = s[at++];
        if (c != '\\') {
          out += c;
          continue;
        }
        if (at >= s.size()) fail("unfinished escape");
        char e = s[at++];
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'u': {
            unsigned code = hex4();
            if (code >= 0xD800 && code < 0xDC00 && take("\\u")) code = 0x10000 + ((code - 0xD800) << 10) + (hex4() - 0xDC00);
            append_utf8(out, code);
            break;
          }
          default: out += e;  // \" \\ \/
        }
      }
      if (at >= s.size()) fail("unterminated string");
      ++at;
      return out;
    }
  };

  static void dump_string(std::string& out, const std::string& value) {
    out += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char escape[8];
        std::snprintf(escape, sizeof(escape), "\\u%04x", c);
        out += escape;
      } else {
        out += c;
      }
    }
    out += '"';
  }

  void dump_to(std::string& out) const {
    switch (kind) {
      case Kind::Null: out += "null"; break;
      case Kind::Bool: out += boolean ? "true" : "false"; break;
      case Kind::Number: {
        char buffer[32];
        if (std::isfinite(number) && number == std::floor(number) && std::fabs(number) < 1e15)
          std::snprintf(buffer, sizeof(buffer), "%lld", static_cast<long long>(number));
        else
          std::snprintf(buffer, sizeof(buffer), "%.17g", number);
        out += buffer;
        break;
      }
      case Kind::String: dump_string(out, text); break;
      case Kind::Array:
        out += '[';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += ", ";
          items[i].dump_to(out);
        }
        out += ']';
        break;
      case Kind::Object:
        out += '{';
        for (size_t i = 0; i < members.size(); ++i) {
          if (i) out += ", ";
          dump_string(out, members[i].first);
          out += ": ";
          members[i].second.dump_to(out);
        }
        out += '}';
        break;
    }
  }
};
