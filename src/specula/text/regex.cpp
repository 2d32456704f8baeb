// Oniguruma-to-PCRE2 pattern translation and Oniguruma-style match iteration (see regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "specula/text/regex.h"

#include <pcre2.h>

#include <array>
#include <cctype>
#include <optional>

#include "specula/core/error.h"
#include "specula/io/strict_json.h"
#include "specula/text/unicode.h"

namespace specula::text {
namespace {

constexpr std::string_view kWordClassBody = "\\p{L}\\p{M}\\p{N}\\p{Pc}";

// Long General_Category names (Oniguruma accepts them, PCRE2 10.42 does not), keyed loosely.
constexpr std::array<std::pair<std::string_view, std::string_view>, 40> kLongPropertyNames = {{
    {"letter", "L"}, {"casedletter", "LC"}, {"uppercaseletter", "Lu"}, {"lowercaseletter", "Ll"},
    {"titlecaseletter", "Lt"}, {"modifierletter", "Lm"}, {"otherletter", "Lo"}, {"mark", "M"},
    {"nonspacingmark", "Mn"}, {"spacingmark", "Mc"}, {"enclosingmark", "Me"}, {"number", "N"},
    {"decimalnumber", "Nd"}, {"digit", "Nd"}, {"letternumber", "Nl"}, {"othernumber", "No"},
    {"punctuation", "P"}, {"connectorpunctuation", "Pc"}, {"dashpunctuation", "Pd"},
    {"openpunctuation", "Ps"}, {"closepunctuation", "Pe"}, {"initialpunctuation", "Pi"},
    {"finalpunctuation", "Pf"}, {"otherpunctuation", "Po"}, {"symbol", "S"}, {"mathsymbol", "Sm"},
    {"currencysymbol", "Sc"}, {"modifiersymbol", "Sk"}, {"othersymbol", "So"}, {"separator", "Z"},
    {"spaceseparator", "Zs"}, {"lineseparator", "Zl"}, {"paragraphseparator", "Zp"}, {"other", "C"},
    {"control", "Cc"}, {"format", "Cf"}, {"surrogate", "Cs"}, {"privateuse", "Co"},
    {"unassigned", "Cn"}, {"space", "White_Space"},
}};

std::string property_name_for_pcre2(std::string_view name) {
  std::string loose;
  for (char c : name) {
    if (c == '_' || c == '-' || c == ' ') continue;
    loose.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  for (const auto& [long_name, short_name] : kLongPropertyNames) {
    if (loose == long_name) return std::string(short_name);
  }
  return std::string(name);
}

bool is_hex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

std::string pcre2_error_text(int code) {
  std::array<PCRE2_UCHAR, 256> buffer{};
  pcre2_get_error_message(code, buffer.data(), buffer.size());
  return std::string(reinterpret_cast<const char*>(buffer.data()));
}

}  // namespace

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() { pcre2_code_free(code); }
};

std::string Regex::translate_oniguruma(std::string_view p, const std::string& where) {
  auto unsupported = [&](std::string_view what) {
    fail(where, ": regex \"", io::text_excerpt(p), "\": ", what, " is not supported");
  };
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  size_t class_body_start = 0;  // a ']' right here is a literal, not the end of the class
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) fail(where, ": regex \"", io::text_excerpt(p), "\" ends with a backslash");
      const char n = p[i + 1];
      switch (n) {
        case 's': out += "\\p{White_Space}"; i += 2; continue;
        case 'S': out += "\\P{White_Space}"; i += 2; continue;
        case 'd': out += "\\p{Nd}"; i += 2; continue;
        case 'D': out += "\\P{Nd}"; i += 2; continue;
        case 'w':
          if (in_class) out += kWordClassBody; else (out += '[', out += kWordClassBody, out += ']');
          i += 2;
          continue;
        case 'W':
          if (in_class) unsupported("\\W inside a character class");
          out += "[^", out += kWordClassBody, out += ']';
          i += 2;
          continue;
        case 'h': out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; i += 2; continue;
        case 'H':
          if (in_class) unsupported("\\H inside a character class");
          out += "[^0-9a-fA-F]";
          i += 2;
          continue;
        case 'v': out += "\\x{0B}"; i += 2; continue;  // Oniguruma: the VT character, not a class
        case 'u':
          if (i + 5 < p.size() && is_hex(p[i + 2]) && is_hex(p[i + 3]) && is_hex(p[i + 4]) && is_hex(p[i + 5])) {
            out += "\\x{", out += p.substr(i + 2, 4), out += '}';
            i += 6;
            continue;
          }
          unsupported("\\u not followed by four hex digits");
          break;
        case 'p':
        case 'P': {
          if (i + 2 >= p.size() || p[i + 2] != '{') unsupported("\\p without braces");
          const size_t close = p.find('}', i + 3);
          if (close == std::string_view::npos) fail(where, ": regex \"", io::text_excerpt(p), "\": unterminated \\p{");
          std::string_view name = p.substr(i + 3, close - (i + 3));
          out += '\\', out += n, out += '{';
          if (!name.empty() && name[0] == '^') out += '^', name.remove_prefix(1);
          out += property_name_for_pcre2(name);
          out += '}';
          i = close + 1;
          continue;
        }
        default: {
          const size_t len = utf8_sequence_length(static_cast<unsigned char>(n));
          out += '\\';
          out += p.substr(i + 1, len);
          i += 1 + len;
          continue;
        }
      }
    }
    if (in_class) {
      if (c == ']' && i != class_body_start) {
        in_class = false;
      } else if (c == '[') {
        if (p.substr(i, 2) != "[:") unsupported("a nested character class");
        const size_t close = p.find(":]", i + 2);
        if (close == std::string_view::npos) unsupported("an unterminated POSIX bracket");
        out += p.substr(i, close + 2 - i);
        i = close + 2;
        continue;
      } else if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        unsupported("character class intersection (&&)");
      }
      out += c;
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += '[';
      ++i;
      if (i < p.size() && p[i] == '^') out += '^', ++i;
      class_body_start = i;
      continue;
    }
    if (c == '^' || c == '$') {
      out += "(?m:", out += c, out += ')';
      ++i;
      continue;
    }
    if (c == '(' && i + 2 < p.size() && p[i + 1] == '?' &&
        (std::isalpha(static_cast<unsigned char>(p[i + 2])) || p[i + 2] == '-')) {
      // Inline options: Oniguruma's Ruby letters are i, m (dot matches newline) and x.
      size_t j = i + 2;
      std::string options;
      for (; j < p.size() && (std::isalpha(static_cast<unsigned char>(p[j])) || p[j] == '-'); ++j) {
        const char o = p[j];
        if (o == 'm') options += 's';
        else if (o == 'i' || o == 'x' || o == '-') options += o;
        else unsupported(std::string("inline option '") + o + "'");
      }
      if (j >= p.size() || (p[j] != ':' && p[j] != ')'))
        fail(where, ": regex \"", io::text_excerpt(p), "\": malformed inline option group");
      out += "(?", out += options, out += p[j];
      i = j + 1;
      continue;
    }
    out += c;
    ++i;
  }
  if (in_class) fail(where, ": regex \"", io::text_excerpt(p), "\": unterminated character class");
  return out;
}

Regex Regex::compile_oniguruma(std::string_view pattern, const std::string& where) {
  const std::string translated = translate_oniguruma(pattern, where);
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  SPECULA_CHECK(context != nullptr, where, ": out of memory compiling a regex");
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, context);
  pcre2_compile_context_free(context);
  if (code == nullptr) {
    // The translation is quoted only where it differs, to keep the message short.
    const std::string as_pcre2 = translated == pattern ? "" : " (as PCRE2 \"" + io::text_excerpt(translated) + "\")";
    fail(where, ": regex \"", io::text_excerpt(pattern), "\"", as_pcre2, " does not compile: ",
         pcre2_error_text(error_code), " at offset ", error_offset);
  }
  auto compiled = std::make_shared<Compiled>();
  compiled->code = code;
  compiled->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  Regex regex;
  regex.compiled_ = std::move(compiled);
  regex.source_ = std::string(pattern);
  return regex;
}

std::vector<Match> Regex::find_all(std::string_view text) const {
  std::vector<Match> matches;
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create_from_pattern(compiled_->code, nullptr), &pcre2_match_data_free);
  SPECULA_CHECK(data != nullptr, "regex: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t search_from = 0;
  std::optional<size_t> previous_end;
  uint32_t extra_options = 0;
  while (search_from <= text.size()) {
    int rc = pcre2_match(compiled_->code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK | extra_options,
                         data.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The interpreter keeps its backtracking state on the heap, so it copes where JIT's stack ran out.
      extra_options = PCRE2_NO_JIT;
      continue;
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("regex \"", io::text_excerpt(source_), "\": matching failed: ", pcre2_error_text(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
    const size_t start = ovector[0], end = ovector[1];
    if (start == end && previous_end == end) {
      search_from += search_from < text.size() ? utf8_sequence_length(static_cast<unsigned char>(text[search_from])) : 1;
      continue;
    }
    matches.push_back({start, end});
    search_from = end;
    previous_end = end;
  }
  return matches;
}

std::vector<MatchRange> ranges_from_matches(std::string_view text, const std::vector<Match>& matches) {
  std::vector<MatchRange> ranges;
  if (text.empty()) {
    ranges.push_back({0, 0, false});
    return ranges;
  }
  size_t previous = 0;
  for (const Match& m : matches) {
    if (previous != m.start) ranges.push_back({previous, m.start, false});
    ranges.push_back({m.start, m.end, true});
    previous = m.end;
  }
  if (previous != text.size()) ranges.push_back({previous, text.size(), false});
  return ranges;
}

std::vector<Match> find_literal(std::string_view text, std::string_view literal) {
  std::vector<Match> matches;
  size_t pos = 0;
  while ((pos = text.find(literal, pos)) != std::string_view::npos) {
    matches.push_back({pos, pos + literal.size()});
    pos += literal.size();
  }
  return matches;
}

}  // namespace specula::text
