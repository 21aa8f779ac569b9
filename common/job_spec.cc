// Job specs: YAML <-> JobSpec through protobuf reflection, defaults, validation (see job_spec.h).
#include "common/job_spec.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/path_schedule.h"
#include "common/status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"
#include "google/protobuf/stubs/common.h"  // IsStructurallyValidUTF8

namespace raptr {
namespace {

namespace pb = google::protobuf;
using FieldType = pb::FieldDescriptor::CppType;

// ---------------------------------------------------------------------------------------------
// Enum names: the YAML writes a value without its enum's prefix (LR_DECAY_COSINE is `cosine`),
// following the proto style guide's rule that values are prefixed with the enum name.

// "SkippedLayerPolicy" -> "SKIPPED_LAYER_POLICY_".
std::string EnumValuePrefix(const pb::EnumDescriptor* type) {
  const std::string& name = type->name();
  std::string prefix;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool word_start = i > 0 && absl::ascii_isupper(c) &&
                            (!absl::ascii_isupper(name[i - 1]) ||
                             (i + 1 < name.size() && absl::ascii_islower(name[i + 1])));
    if (word_start) prefix.push_back('_');
    prefix.push_back(absl::ascii_toupper(c));
  }
  prefix.push_back('_');
  return prefix;
}

std::string ShortEnumName(const pb::EnumValueDescriptor* value) {
  const std::string prefix = EnumValuePrefix(value->type());
  if (absl::StartsWith(value->name(), prefix) && value->name().size() > prefix.size()) {
    return value->name().substr(prefix.size());
  }
  return value->name();
}

// The zero value that stands for "omitted": never written, never accepted.
bool IsUnspecified(const pb::EnumValueDescriptor* value) {
  return value->number() == 0 && absl::EndsWith(value->name(), "UNSPECIFIED");
}

std::string YamlEnumName(const pb::EnumValueDescriptor* value) {
  return absl::AsciiStrToLower(ShortEnumName(value));
}

std::string AllowedEnumNames(const pb::EnumDescriptor* type) {
  std::vector<std::string> names;
  for (int i = 0; i < type->value_count(); ++i) {
    if (!IsUnspecified(type->value(i))) names.push_back(YamlEnumName(type->value(i)));
  }
  return absl::StrJoin(names, ", ");
}

// ---------------------------------------------------------------------------------------------
// YAML -> message.

std::string JoinPath(absl::string_view parent, absl::string_view child) {
  return parent.empty() ? std::string(child) : absl::StrCat(parent, ".", child);
}

bool IsQuoted(const YAML::Node& node) { return node.Tag() == "!"; }

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar: {
      std::string text = node.Scalar();
      if (text.size() > 40) text = absl::StrCat(text.substr(0, 40), "...");
      return IsQuoted(node) ? absl::StrCat("the quoted string '", text, "'")
                            : absl::StrCat("'", text, "'");
    }
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string Location(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ", column ", mark.column + 1, ")");
}

absl::Status YamlError(absl::string_view path, const YAML::Node& node, absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat(path.empty() ? "job spec" : path, ": ", problem, Location(node)));
}

absl::Status Expected(absl::string_view path, const YAML::Node& node, absl::string_view what) {
  return YamlError(path, node, absl::StrCat("expected ", what, ", got ", Describe(node)));
}

// Field names compared loosely, to suggest the intended one: case, '_' and '-' ignored.
std::string LooseName(absl::string_view name) {
  std::string out;
  for (char c : name) {
    if (c != '_' && c != '-') out.push_back(absl::ascii_tolower(c));
  }
  return out;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string UnknownFieldProblem(const pb::Descriptor* type, absl::string_view name) {
  const std::string loose = LooseName(name);
  const pb::FieldDescriptor* best = nullptr;
  size_t best_distance = 0;
  std::vector<std::string> names;
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* field = type->field(i);
    names.push_back(field->name());
    const size_t distance = EditDistance(loose, LooseName(field->name()));
    if (best == nullptr || distance < best_distance) {
      best = field;
      best_distance = distance;
    }
  }
  const bool close = best_distance == 0 || (best_distance == 1 && loose.size() >= 3) ||
                     (best_distance == 2 && loose.size() >= 6);
  if (best != nullptr && close) {
    return absl::StrCat("unknown field (did you mean ", best->name(), "?)");
  }
  return absl::StrCat("unknown field (", type->name(), " has ", absl::StrJoin(names, ", "), ")");
}

template <typename Int>
absl::Status ParseInteger(const YAML::Node& node, absl::string_view path, absl::string_view what,
                          Int* out) {
  if (!node.IsScalar() || IsQuoted(node) || !absl::SimpleAtoi(node.Scalar(), out)) {
    return Expected(path, node, what);
  }
  return absl::OkStatus();
}

absl::Status ParseFinite(const YAML::Node& node, absl::string_view path, double max_magnitude,
                         double* out) {
  if (!node.IsScalar() || IsQuoted(node) || !absl::SimpleAtod(node.Scalar(), out) ||
      !std::isfinite(*out) || std::fabs(*out) > max_magnitude) {
    return Expected(path, node, "a finite number");
  }
  return absl::OkStatus();
}

absl::Status ParseBool(const YAML::Node& node, absl::string_view path, bool* out) {
  static const std::set<std::string> kTrue = {"true", "True", "TRUE"};
  static const std::set<std::string> kFalse = {"false", "False", "FALSE"};
  if (node.IsScalar() && !IsQuoted(node)) {
    if (kTrue.count(node.Scalar())) {
      *out = true;
      return absl::OkStatus();
    }
    if (kFalse.count(node.Scalar())) {
      *out = false;
      return absl::OkStatus();
    }
  }
  return Expected(path, node, "true or false");
}

absl::Status ParseEnum(const YAML::Node& node, absl::string_view path,
                       const pb::EnumDescriptor* type, const pb::EnumValueDescriptor** out) {
  if (node.IsScalar()) {
    for (int i = 0; i < type->value_count(); ++i) {
      const pb::EnumValueDescriptor* value = type->value(i);
      if (IsUnspecified(value)) continue;
      if (absl::EqualsIgnoreCase(node.Scalar(), ShortEnumName(value)) ||
          absl::EqualsIgnoreCase(node.Scalar(), value->name())) {
        *out = value;
        return absl::OkStatus();
      }
    }
  }
  return Expected(path, node, absl::StrCat("one of ", AllowedEnumNames(type)));
}

// Sets (singular) or appends (repeated) one scalar value of `field` from `node`.
absl::Status ParseScalar(const YAML::Node& node, absl::string_view path,
                         const pb::FieldDescriptor* field, pb::Message* message) {
  const pb::Reflection* reflection = message->GetReflection();
  const bool repeated = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldType::CPPTYPE_INT32: {
      int32_t v = 0;
      RETURN_IF_ERROR(ParseInteger(node, path, "a 32-bit integer", &v));
      repeated ? reflection->AddInt32(message, field, v) : reflection->SetInt32(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_INT64: {
      int64_t v = 0;
      RETURN_IF_ERROR(ParseInteger(node, path, "a 64-bit integer", &v));
      repeated ? reflection->AddInt64(message, field, v) : reflection->SetInt64(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_UINT32: {
      uint32_t v = 0;
      RETURN_IF_ERROR(ParseInteger(node, path, "a non-negative 32-bit integer", &v));
      repeated ? reflection->AddUInt32(message, field, v)
               : reflection->SetUInt32(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_UINT64: {
      uint64_t v = 0;
      RETURN_IF_ERROR(ParseInteger(node, path, "a non-negative 64-bit integer", &v));
      repeated ? reflection->AddUInt64(message, field, v)
               : reflection->SetUInt64(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_DOUBLE: {
      double v = 0;
      RETURN_IF_ERROR(ParseFinite(node, path, std::numeric_limits<double>::max(), &v));
      repeated ? reflection->AddDouble(message, field, v)
               : reflection->SetDouble(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_FLOAT: {
      double v = 0;
      RETURN_IF_ERROR(ParseFinite(node, path, std::numeric_limits<float>::max(), &v));
      const float f = static_cast<float>(v);
      repeated ? reflection->AddFloat(message, field, f) : reflection->SetFloat(message, field, f);
      break;
    }
    case FieldType::CPPTYPE_BOOL: {
      bool v = false;
      RETURN_IF_ERROR(ParseBool(node, path, &v));
      repeated ? reflection->AddBool(message, field, v) : reflection->SetBool(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = nullptr;
      RETURN_IF_ERROR(ParseEnum(node, path, field->enum_type(), &v));
      repeated ? reflection->AddEnum(message, field, v) : reflection->SetEnum(message, field, v);
      break;
    }
    case FieldType::CPPTYPE_STRING: {
      // Any scalar, quoted or not: `name: 2024` is the string "2024".
      if (!node.IsScalar()) return Expected(path, node, "a string");
      // proto3 strings are UTF-8: protobuf refuses other bytes off the wire, and JobSpecToYaml
      // could not write them back (this is protobuf's own check).
      if (field->type() == pb::FieldDescriptor::TYPE_STRING &&
          !pb::internal::IsStructurallyValidUTF8(node.Scalar())) {
        return YamlError(path, node, "expected a UTF-8 string, got bytes that are not UTF-8");
      }
      repeated ? reflection->AddString(message, field, node.Scalar())
               : reflection->SetString(message, field, node.Scalar());
      break;
    }
    case FieldType::CPPTYPE_MESSAGE:
      return absl::InternalError(absl::StrCat(path, ": ParseScalar on a message field"));
  }
  return absl::OkStatus();
}

absl::Status ParseMessage(const YAML::Node& node, const std::string& path, pb::Message* message);

// A proto map field from a YAML map: keys converted as the map's key type, sorted on output.
absl::Status ParseMapField(const YAML::Node& node, const std::string& path,
                           const pb::FieldDescriptor* field, pb::Message* message) {
  if (!node.IsMap()) return Expected(path, node, "a map");
  const pb::FieldDescriptor* key_field = field->message_type()->map_key();
  const pb::FieldDescriptor* value_field = field->message_type()->map_value();
  std::set<std::string> seen;
  // Range-for keeps each entry alive; `it->first` would point into a destroyed temporary.
  for (const auto& pair : node) {
    const YAML::Node& key = pair.first;
    if (!key.IsScalar()) return Expected(path, key, "a scalar map key");
    const std::string entry_path = absl::StrCat(path, "[", key.Scalar(), "]");
    if (!seen.insert(key.Scalar()).second) return YamlError(entry_path, key, "duplicate key");
    pb::Message* entry = message->GetReflection()->AddMessage(message, field);
    RETURN_IF_ERROR(ParseScalar(key, entry_path, key_field, entry));
    if (value_field->cpp_type() == FieldType::CPPTYPE_MESSAGE) {
      RETURN_IF_ERROR(ParseMessage(pair.second, entry_path,
                                   entry->GetReflection()->MutableMessage(entry, value_field)));
    } else {
      RETURN_IF_ERROR(ParseScalar(pair.second, entry_path, value_field, entry));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseField(const YAML::Node& node, const std::string& path,
                        const pb::FieldDescriptor* field, pb::Message* message) {
  const pb::Reflection* reflection = message->GetReflection();
  const bool is_message = field->cpp_type() == FieldType::CPPTYPE_MESSAGE;
  if (field->is_map()) return ParseMapField(node, path, field, message);
  if (field->is_repeated()) {
    if (!node.IsSequence()) return Expected(path, node, "a sequence");
    size_t index = 0;
    for (const YAML::Node& item : node) {
      const std::string item_path = absl::StrCat(path, "[", index, "]");
      if (is_message) {
        RETURN_IF_ERROR(ParseMessage(item, item_path, reflection->AddMessage(message, field)));
      } else {
        RETURN_IF_ERROR(ParseScalar(item, item_path, field, message));
      }
      ++index;
    }
    return absl::OkStatus();
  }
  if (is_message) return ParseMessage(node, path, reflection->MutableMessage(message, field));
  return ParseScalar(node, path, field, message);
}

// A message from a YAML map of its field names. A null node leaves `message` as it is (the
// caller has already marked it present).
absl::Status ParseMessage(const YAML::Node& node, const std::string& path, pb::Message* message) {
  if (node.IsNull()) return absl::OkStatus();
  if (!node.IsMap()) return Expected(path, node, "a map");
  const pb::Descriptor* type = message->GetDescriptor();
  std::set<std::string> seen;
  std::map<const pb::OneofDescriptor*, std::string> oneof_member;  // the member's path
  // Range-for keeps each entry alive; `it->first` would point into a destroyed temporary.
  for (const auto& entry : node) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) return Expected(path, key, "a field name");
    const std::string& name = key.Scalar();
    const std::string field_path = JoinPath(path, name);
    const pb::FieldDescriptor* field = type->FindFieldByName(name);
    if (field == nullptr) return YamlError(field_path, key, UnknownFieldProblem(type, name));
    if (!seen.insert(name).second) return YamlError(field_path, key, "duplicate key");
    if (const pb::OneofDescriptor* oneof = field->real_containing_oneof()) {
      auto [previous, inserted] = oneof_member.emplace(oneof, field_path);
      if (!inserted) {
        std::vector<std::string> members;
        for (int i = 0; i < oneof->field_count(); ++i) members.push_back(oneof->field(i)->name());
        return YamlError(
            path, key,
            absl::StrCat(previous->second, " and ", field_path, " are both set; choose one of ",
                         absl::StrJoin(members, ", ")));
      }
    }
    RETURN_IF_ERROR(ParseField(entry.second, field_path, field, message));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Message -> YAML.

template <typename T>
std::string ShortestText(T value) {
  char buffer[64];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

// One scalar of `field` (element `index` when repeated) as YAML text.
std::string ScalarText(const pb::Message& message, const pb::FieldDescriptor* field, int index) {
  const pb::Reflection* r = message.GetReflection();
  const bool rep = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldType::CPPTYPE_INT32:
      return absl::StrCat(rep ? r->GetRepeatedInt32(message, field, index)
                              : r->GetInt32(message, field));
    case FieldType::CPPTYPE_INT64:
      return absl::StrCat(rep ? r->GetRepeatedInt64(message, field, index)
                              : r->GetInt64(message, field));
    case FieldType::CPPTYPE_UINT32:
      return absl::StrCat(rep ? r->GetRepeatedUInt32(message, field, index)
                              : r->GetUInt32(message, field));
    case FieldType::CPPTYPE_UINT64:
      return absl::StrCat(rep ? r->GetRepeatedUInt64(message, field, index)
                              : r->GetUInt64(message, field));
    case FieldType::CPPTYPE_DOUBLE:
      return ShortestText(rep ? r->GetRepeatedDouble(message, field, index)
                              : r->GetDouble(message, field));
    case FieldType::CPPTYPE_FLOAT:
      return ShortestText(rep ? r->GetRepeatedFloat(message, field, index)
                              : r->GetFloat(message, field));
    case FieldType::CPPTYPE_BOOL:
      return (rep ? r->GetRepeatedBool(message, field, index) : r->GetBool(message, field))
                 ? "true"
                 : "false";
    case FieldType::CPPTYPE_ENUM: {
      const int number =
          rep ? r->GetRepeatedEnumValue(message, field, index) : r->GetEnumValue(message, field);
      const pb::EnumValueDescriptor* value = field->enum_type()->FindValueByNumber(number);
      return value != nullptr ? YamlEnumName(value) : absl::StrCat(number);
    }
    case FieldType::CPPTYPE_STRING:
      return rep ? r->GetRepeatedString(message, field, index) : r->GetString(message, field);
    case FieldType::CPPTYPE_MESSAGE:
      break;
  }
  return "";
}

// Whether a plain scalar `text` would read as something other than a string: null (which our
// parser refuses for strings), or a boolean or number (which other YAML readers would produce).
bool LooksLikeNonString(const std::string& text) {
  static const std::set<std::string> kKeywords = {"",    "~",  "null", "true", "false",
                                                  "yes", "no", "on",   "off"};
  double number = 0;
  return kKeywords.count(absl::AsciiStrToLower(text)) > 0 || absl::SimpleAtod(text, &number);
}

void EmitScalar(YAML::Emitter& out, const pb::FieldDescriptor* field, const std::string& text) {
  // A '\r' too: yaml-cpp writes "a\r" as a plain scalar, which reads back as "a".
  if (field->cpp_type() == FieldType::CPPTYPE_STRING &&
      (LooksLikeNonString(text) || text.find('\r') != std::string::npos)) {
    out << YAML::DoubleQuoted;
  }
  out << text;
}

void EmitMessage(YAML::Emitter& out, const pb::Message& message) {
  const pb::Descriptor* type = message.GetDescriptor();
  const pb::Reflection* r = message.GetReflection();
  std::vector<const pb::FieldDescriptor*> set_fields;
  r->ListFields(message, &set_fields);
  if (set_fields.empty()) out << YAML::Flow;  // `full: {}`
  out << YAML::BeginMap;
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* field = type->field(i);
    const bool is_message = field->cpp_type() == FieldType::CPPTYPE_MESSAGE;
    if (field->is_map()) {
      const int size = r->FieldSize(message, field);
      if (size == 0) continue;
      const pb::FieldDescriptor* key_field = field->message_type()->map_key();
      const pb::FieldDescriptor* value_field = field->message_type()->map_value();
      std::vector<std::pair<std::string, const pb::Message*>> entries;
      for (int j = 0; j < size; ++j) {
        const pb::Message& entry = r->GetRepeatedMessage(message, field, j);
        entries.emplace_back(ScalarText(entry, key_field, -1), &entry);
      }
      std::sort(entries.begin(), entries.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      out << YAML::Key << field->name() << YAML::Value << YAML::BeginMap;
      for (const auto& [key, entry] : entries) {
        out << YAML::Key;
        EmitScalar(out, key_field, key);
        out << YAML::Value;
        if (value_field->cpp_type() == FieldType::CPPTYPE_MESSAGE) {
          EmitMessage(out, entry->GetReflection()->GetMessage(*entry, value_field));
        } else {
          EmitScalar(out, value_field, ScalarText(*entry, value_field, -1));
        }
      }
      out << YAML::EndMap;
    } else if (field->is_repeated()) {
      const int size = r->FieldSize(message, field);
      if (size == 0) continue;
      out << YAML::Key << field->name() << YAML::Value;
      if (!is_message) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (int j = 0; j < size; ++j) {
        if (is_message) {
          EmitMessage(out, r->GetRepeatedMessage(message, field, j));
        } else {
          EmitScalar(out, field, ScalarText(message, field, j));
        }
      }
      out << YAML::EndSeq;
    } else if (r->HasField(message, field)) {
      out << YAML::Key << field->name() << YAML::Value;
      if (is_message) {
        EmitMessage(out, r->GetMessage(message, field));
      } else {
        EmitScalar(out, field, ScalarText(message, field, -1));
      }
    }
  }
  out << YAML::EndMap;
}

// ---------------------------------------------------------------------------------------------
// Defaults.

// The paper's default path lengths for L blocks (shared/PAPER.md; the same rule as
// DefaultRaptrSchedule in common/path_schedule.h): L/2, 2L/3, 5L/6, L rounded to nearest, each at
// least `min_length`.
std::vector<int32_t> DefaultStageLengths(int32_t num_layers, int32_t min_length) {
  std::vector<int32_t> lengths;
  for (double fraction : {1.0 / 2, 2.0 / 3, 5.0 / 6, 1.0}) {
    lengths.push_back(
        std::max(min_length, static_cast<int32_t>(std::lround(fraction * num_layers))));
  }
  return lengths;
}

constexpr double kDefaultStageFraction = 0.25;

void ApplyRaptrDefaults(const v1::ModelSpec& model, v1::RaptrSchedule* raptr) {
  const bool layers_known = model.has_layers() && model.layers() >= 1;
  const int32_t num_layers = model.layers();
  if (!raptr->has_no_fixed_layers()) raptr->set_no_fixed_layers(false);
  if (raptr->fixed_layers_size() == 0 && !raptr->no_fixed_layers() && layers_known) {
    raptr->add_fixed_layers(0);
    if (num_layers > 1) raptr->add_fixed_layers(num_layers - 1);
  }
  if (raptr->stages_size() == 0 && layers_known) {
    for (int32_t length : DefaultStageLengths(num_layers, raptr->fixed_layers_size())) {
      v1::RaptrStage* stage = raptr->add_stages();
      stage->set_path_length(length);
      stage->set_fraction(kDefaultStageFraction);
    }
  }
  if (raptr->sampling() == v1::PATH_SAMPLING_UNSPECIFIED) {
    raptr->set_sampling(v1::PATH_SAMPLING_BERNOULLI);
  }
  if (raptr->scaling() == v1::OUTPUT_SCALING_UNSPECIFIED) {
    raptr->set_scaling(v1::OUTPUT_SCALING_NONE);
  }
  if (!raptr->has_full_warmup_steps()) raptr->set_full_warmup_steps(0);
}

void ApplyStackingDefaults(const v1::ModelSpec& model, v1::StackingSchedule* stacking) {
  if (stacking->stages_size() > 0 || !model.has_layers() || model.layers() < 1) return;
  // Depths L/2, 3L/4, L over equal thirds (DefaultStackingSchedule in common/path_schedule.h;
  // 6-9-12 for L = 12). Stacking grows strictly, so equal depths (small L) merge into one stage.
  const int32_t num_layers = model.layers();
  for (double depth : {1.0 / 2, 3.0 / 4, 1.0}) {
    const int32_t length = std::max(1, static_cast<int32_t>(std::lround(depth * num_layers)));
    const int n = stacking->stages_size();
    if (n > 0 && stacking->stages(n - 1).layers() == length) {
      v1::StackingStage* last = stacking->mutable_stages(n - 1);
      last->set_fraction(last->fraction() + 1.0 / 3);
      continue;
    }
    v1::StackingStage* stage = stacking->add_stages();
    stage->set_layers(length);
    stage->set_fraction(1.0 / 3);
  }
}

// ---------------------------------------------------------------------------------------------
// Validation.

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

// Model size limits (see job.proto's ModelSpec).
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxWidth = 65536;
constexpr int64_t kMaxSeq = 1 << 20;
// List limits, so one spec cannot make a worker open (or the coordinator check and plan) an
// unbounded number of things: far above real jobs (a corpus is a few hundred shards; the
// paper's schedules have 4 to 6 stages), and each list alone can still fill the 64 KiB spec.
constexpr int kMaxShards = 4096;
constexpr int kMaxStages = 1024;
// Linux's PATH_MAX: open(2) refuses longer paths anyway.
constexpr size_t kMaxPathBytes = 4096;

absl::Status Required(bool present, absl::string_view path) {
  if (!present) return Invalid(path, " is required");
  return absl::OkStatus();
}

absl::Status AtLeast(absl::string_view path, int64_t value, int64_t min) {
  if (value < min) return Invalid(path, " must be >= ", min, ", got ", value);
  return absl::OkStatus();
}

absl::Status Between(absl::string_view path, int64_t value, int64_t min, int64_t max) {
  if (value < min || value > max) {
    return Invalid(path, " must be in [", min, ", ", max, "], got ", value);
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(absl::string_view path, double value) {
  if (!std::isfinite(value)) return Invalid(path, " must be a finite number, got ", value);
  return absl::OkStatus();
}

// lo < value (or lo <= value when lo_inclusive), and value <= hi (or < hi).
absl::Status InRange(absl::string_view path, double value, double lo, bool lo_inclusive, double hi,
                     bool hi_inclusive) {
  RETURN_IF_ERROR(CheckFinite(path, value));
  const bool lo_ok = lo_inclusive ? value >= lo : value > lo;
  const bool hi_ok = hi_inclusive ? value <= hi : value < hi;
  if (!lo_ok || !hi_ok) {
    return Invalid(path, " must be in ", lo_inclusive ? "[" : "(", lo, ", ", hi,
                   hi_inclusive ? "]" : ")", ", got ", value);
  }
  return absl::OkStatus();
}

absl::Status CheckEnum(absl::string_view path, int value, bool (*is_valid)(int),
                       const pb::EnumDescriptor* type) {
  const pb::EnumValueDescriptor* known = type->FindValueByNumber(value);
  if (!is_valid(value) || known == nullptr || IsUnspecified(known)) {
    return Invalid(path, " must be one of ", AllowedEnumNames(type), ", got ",
                   known != nullptr ? known->name() : absl::StrCat(value));
  }
  return absl::OkStatus();
}

absl::Status CheckName(const v1::JobSpec& spec) {
  RETURN_IF_ERROR(Required(spec.has_name(), "name"));
  const std::string& name = spec.name();
  if (name.empty() || name.size() > 128) {
    return Invalid("name must have 1 to 128 characters, got ", name.size());
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return Invalid("name '", name, "' may only use A-Z a-z 0-9 . _ -");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckModel(const v1::JobSpec& spec) {
  const v1::ModelSpec& m = spec.model();
  RETURN_IF_ERROR(
      CheckEnum("model.kind", m.kind(), v1::ModelKind_IsValid, v1::ModelKind_descriptor()));
  // Upper bounds far above any model trained today, so that one submitted spec cannot make the
  // coordinator plan (or a worker allocate) absurd sizes: the planner keeps per-block vectors.
  RETURN_IF_ERROR(Required(m.has_layers(), "model.layers"));
  RETURN_IF_ERROR(Between("model.layers", m.layers(), 1, kMaxLayers));
  RETURN_IF_ERROR(Required(m.has_d_model(), "model.d_model"));
  RETURN_IF_ERROR(Between("model.d_model", m.d_model(), 1, kMaxWidth));
  RETURN_IF_ERROR(Required(m.has_heads(), "model.heads"));
  RETURN_IF_ERROR(Between("model.heads", m.heads(), 1, m.d_model()));
  if (m.d_model() % m.heads() != 0) {
    return Invalid("model.d_model (", m.d_model(), ") must be divisible by model.heads (",
                   m.heads(), ")");
  }
  RETURN_IF_ERROR(Required(m.has_d_ff(), "model.d_ff"));
  RETURN_IF_ERROR(Between("model.d_ff", m.d_ff(), 1, 4 * kMaxWidth));
  RETURN_IF_ERROR(Required(m.has_vocab_size(), "model.vocab_size"));
  if (m.vocab_size() < 1 || m.vocab_size() > 65536) {
    return Invalid("model.vocab_size must be in [1, 65536] (token shards store uint16), got ",
                   m.vocab_size());
  }
  RETURN_IF_ERROR(Required(m.has_max_seq(), "model.max_seq"));
  RETURN_IF_ERROR(Between("model.max_seq", m.max_seq(), 1, kMaxSeq));
  if (m.max_seq() < spec.training().seq()) {
    return Invalid("model.max_seq (", m.max_seq(), ") must be >= training.seq (",
                   spec.training().seq(), ")");
  }
  return absl::OkStatus();
}

absl::Status CheckShards(const google::protobuf::RepeatedPtrField<std::string>& shards,
                         absl::string_view path) {
  if (shards.empty()) return Invalid(path, " is required (at least one shard)");
  if (shards.size() > kMaxShards) {
    return Invalid(path, " has ", shards.size(), " shards, more than the ", kMaxShards, " allowed");
  }
  for (int i = 0; i < shards.size(); ++i) {
    const std::string& shard = shards.Get(i);
    if (shard.empty()) return Invalid(path, "[", i, "] is empty");
    if (shard.size() > kMaxPathBytes) {
      return Invalid(path, "[", i, "] is ", shard.size(), " bytes long, more than the ",
                     kMaxPathBytes, " a path may have");
    }
    // open(2) would stop at the NUL and open another file than the one named (and checked).
    if (shard.find('\0') != std::string::npos) return Invalid(path, "[", i, "] holds a NUL byte");
  }
  return absl::OkStatus();
}

absl::Status CheckData(const v1::JobSpec& spec) {
  const v1::DataSpec& d = spec.data();
  RETURN_IF_ERROR(CheckShards(d.train_shards(), "data.train_shards"));
  RETURN_IF_ERROR(CheckShards(d.val_shards(), "data.val_shards"));
  if (spec.model().kind() == v1::MODEL_KIND_BERT) {
    RETURN_IF_ERROR(Required(d.has_mask_id(), "data.mask_id (for a bert model)"));
    if (d.mask_id() < 0 || d.mask_id() >= spec.model().vocab_size()) {
      return Invalid("data.mask_id must be in [0, model.vocab_size) = [0, ",
                     spec.model().vocab_size(), "), got ", d.mask_id());
    }
  } else if (d.has_mask_id()) {
    return Invalid("data.mask_id is only for bert models (model.kind is gpt)");
  }
  return absl::OkStatus();
}

absl::Status CheckTraining(const v1::JobSpec& spec) {
  const v1::TrainingSpec& t = spec.training();
  RETURN_IF_ERROR(Required(t.has_batch(), "training.batch"));
  RETURN_IF_ERROR(AtLeast("training.batch", t.batch(), 1));
  RETURN_IF_ERROR(Required(t.has_seq(), "training.seq"));
  RETURN_IF_ERROR(AtLeast("training.seq", t.seq(), 1));
  RETURN_IF_ERROR(Required(t.has_micro_batches(), "training.micro_batches"));
  RETURN_IF_ERROR(AtLeast("training.micro_batches", t.micro_batches(), 1));
  RETURN_IF_ERROR(Required(t.has_steps(), "training.steps"));
  RETURN_IF_ERROR(AtLeast("training.steps", t.steps(), 1));
  RETURN_IF_ERROR(Required(t.has_seed(), "training.seed"));
  RETURN_IF_ERROR(Required(t.has_eval_every(), "training.eval_every"));
  RETURN_IF_ERROR(AtLeast("training.eval_every", t.eval_every(), 0));
  RETURN_IF_ERROR(Required(t.has_eval_batches(), "training.eval_batches"));
  RETURN_IF_ERROR(AtLeast("training.eval_batches", t.eval_batches(), 1));
  RETURN_IF_ERROR(Required(t.has_checkpoint_every(), "training.checkpoint_every"));
  RETURN_IF_ERROR(AtLeast("training.checkpoint_every", t.checkpoint_every(), 0));
  return absl::OkStatus();
}

absl::Status CheckOptimizer(const v1::JobSpec& spec) {
  const v1::OptimizerSpec& o = spec.optimizer();
  const int64_t steps = spec.training().steps();
  RETURN_IF_ERROR(Required(o.has_lr(), "optimizer.lr"));
  RETURN_IF_ERROR(CheckFinite("optimizer.lr", o.lr()));
  if (!(o.lr() > 0)) return Invalid("optimizer.lr must be > 0, got ", o.lr());
  RETURN_IF_ERROR(Required(o.has_min_lr_ratio(), "optimizer.min_lr_ratio"));
  RETURN_IF_ERROR(InRange("optimizer.min_lr_ratio", o.min_lr_ratio(), 0, true, 1, true));
  RETURN_IF_ERROR(Required(o.has_warmup_steps(), "optimizer.warmup_steps"));
  RETURN_IF_ERROR(AtLeast("optimizer.warmup_steps", o.warmup_steps(), 0));
  if (o.warmup_steps() >= steps) {
    return Invalid("optimizer.warmup_steps (", o.warmup_steps(), ") must be < training.steps (",
                   steps, ")");
  }
  RETURN_IF_ERROR(
      CheckEnum("optimizer.decay", o.decay(), v1::LrDecay_IsValid, v1::LrDecay_descriptor()));
  RETURN_IF_ERROR(Required(o.has_beta1(), "optimizer.beta1"));
  RETURN_IF_ERROR(InRange("optimizer.beta1", o.beta1(), 0, true, 1, false));
  RETURN_IF_ERROR(Required(o.has_beta2(), "optimizer.beta2"));
  RETURN_IF_ERROR(InRange("optimizer.beta2", o.beta2(), 0, true, 1, false));
  RETURN_IF_ERROR(Required(o.has_eps(), "optimizer.eps"));
  RETURN_IF_ERROR(CheckFinite("optimizer.eps", o.eps()));
  if (!(o.eps() > 0)) return Invalid("optimizer.eps must be > 0, got ", o.eps());
  RETURN_IF_ERROR(Required(o.has_weight_decay(), "optimizer.weight_decay"));
  RETURN_IF_ERROR(CheckFinite("optimizer.weight_decay", o.weight_decay()));
  if (!(o.weight_decay() >= 0)) {
    return Invalid("optimizer.weight_decay must be >= 0, got ", o.weight_decay());
  }
  RETURN_IF_ERROR(Required(o.has_grad_clip(), "optimizer.grad_clip"));
  RETURN_IF_ERROR(CheckFinite("optimizer.grad_clip", o.grad_clip()));
  if (!(o.grad_clip() >= 0)) {
    return Invalid("optimizer.grad_clip must be >= 0 (0: no clipping), got ", o.grad_clip());
  }
  RETURN_IF_ERROR(CheckEnum("optimizer.skipped", o.skipped(), v1::SkippedLayerPolicy_IsValid,
                            v1::SkippedLayerPolicy_descriptor()));
  return absl::OkStatus();
}

// Stage s of `fractions` ends after floor(total * (f_1 + ... + f_s)) steps; the last at `total`.
// The small slack keeps 3 x 1/3 of 600 at 200 / 400 / 600 despite rounding in the sum.
std::vector<int64_t> StepsFromFractions(const std::vector<double>& fractions, int64_t total) {
  std::vector<int64_t> steps;
  double cumulative = 0;
  int64_t previous_end = 0;
  for (size_t s = 0; s < fractions.size(); ++s) {
    cumulative += fractions[s];
    // Compared as a double first: with total near INT64_MAX the product rounds up to 2^63 (or
    // past it: the fractions may sum to a little over 1), which no int64_t holds.
    const double end_steps = std::floor(static_cast<double>(total) * cumulative + 1e-6);
    int64_t end = s + 1 == fractions.size() || end_steps >= static_cast<double>(total)
                      ? total
                      : static_cast<int64_t>(end_steps);
    end = std::clamp(end, previous_end, total);
    steps.push_back(end - previous_end);
    previous_end = end;
  }
  return steps;
}

template <typename Stage>
std::vector<int64_t> StageSteps(const google::protobuf::RepeatedPtrField<Stage>& stages,
                                int64_t available) {
  if (stages.empty()) return {};
  if (stages.Get(0).duration_case() == Stage::kSteps) {
    std::vector<int64_t> steps;
    for (const Stage& stage : stages) steps.push_back(stage.steps());
    return steps;
  }
  std::vector<double> fractions;
  for (const Stage& stage : stages) fractions.push_back(stage.fraction());
  return StepsFromFractions(fractions, available);
}

// Durations of `stages` (at `path`, e.g. "schedule.raptr.stages"): all steps or all fractions,
// and they fit the `available` steps (`available_text` says where that number comes from).
template <typename Stage>
absl::Status CheckDurations(const google::protobuf::RepeatedPtrField<Stage>& stages,
                            absl::string_view path, int64_t available,
                            absl::string_view available_text) {
  const bool by_steps = stages.Get(0).duration_case() == Stage::kSteps;
  double fraction_sum = 0;
  int64_t step_sum = 0;
  for (int i = 0; i < stages.size(); ++i) {
    const Stage& stage = stages.Get(i);
    const std::string stage_path = absl::StrCat(path, "[", i, "]");
    if (stage.duration_case() == Stage::DURATION_NOT_SET) {
      return Invalid(stage_path, " needs a duration: steps or fraction");
    }
    if ((stage.duration_case() == Stage::kSteps) != by_steps) {
      return Invalid(stage_path, " has ", by_steps ? "fraction" : "steps", " but ", path,
                     "[0] has ", by_steps ? "steps" : "fraction",
                     ": all stages use steps or all use fractions");
    }
    if (by_steps) {
      RETURN_IF_ERROR(AtLeast(absl::StrCat(stage_path, ".steps"), stage.steps(), 1));
      if (stage.steps() > available) {
        return Invalid(stage_path, ".steps (", stage.steps(), ") is more than the ", available,
                       " steps available (", available_text, ")");
      }
      step_sum += stage.steps();  // each <= available: no overflow
    } else {
      RETURN_IF_ERROR(
          InRange(absl::StrCat(stage_path, ".fraction"), stage.fraction(), 0, false, 1, true));
      fraction_sum += stage.fraction();
    }
  }
  if (by_steps) {
    if (step_sum > available) {
      return Invalid(path, ": the stages' steps sum to ", step_sum, ", more than the ", available,
                     " steps available (", available_text, ")");
    }
    return absl::OkStatus();
  }
  if (std::fabs(fraction_sum - 1) > 1e-6) {
    return Invalid(path, ": the stages' fractions sum to ", fraction_sum, ", must sum to 1");
  }
  const std::vector<int64_t> steps = StageSteps(stages, available);
  for (int i = 0; i < stages.size(); ++i) {
    if (steps[i] < 1) {
      return Invalid(path, "[", i, "].fraction (", stages.Get(i).fraction(), ") of the ", available,
                     " steps available (", available_text, ") is less than one step");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckStageCount(int stages, absl::string_view path) {
  if (stages > kMaxStages) {
    return Invalid(path, " has ", stages, " stages, more than the ", kMaxStages, " allowed");
  }
  return absl::OkStatus();
}

absl::Status CheckRaptr(const v1::JobSpec& spec) {
  const v1::RaptrSchedule& r = spec.schedule().raptr();
  const int32_t num_layers = spec.model().layers();
  const int64_t steps = spec.training().steps();
  const std::string layers_text = absl::StrCat("model.layers is ", num_layers);
  if (r.no_fixed_layers() && r.fixed_layers_size() > 0) {
    return Invalid("schedule.raptr.fixed_layers and schedule.raptr.no_fixed_layers are both set");
  }
  if (!r.no_fixed_layers() && r.fixed_layers_size() == 0) {
    return Invalid("schedule.raptr.fixed_layers is required (or no_fixed_layers: true)");
  }
  std::set<int32_t> fixed;
  for (int i = 0; i < r.fixed_layers_size(); ++i) {
    const int32_t layer = r.fixed_layers(i);
    if (layer < 0 || layer >= num_layers) {
      return Invalid("schedule.raptr.fixed_layers[", i, "] (", layer,
                     ") is not a block: must be in [0, ", num_layers, ") (", layers_text, ")");
    }
    if (!fixed.insert(layer).second) {
      return Invalid("schedule.raptr.fixed_layers[", i, "] (", layer, ") is listed twice");
    }
  }
  RETURN_IF_ERROR(Required(r.has_full_warmup_steps(), "schedule.raptr.full_warmup_steps"));
  RETURN_IF_ERROR(AtLeast("schedule.raptr.full_warmup_steps", r.full_warmup_steps(), 0));
  if (r.full_warmup_steps() >= steps) {
    return Invalid("schedule.raptr.full_warmup_steps (", r.full_warmup_steps(),
                   ") must be < training.steps (", steps, ")");
  }
  if (r.stages_size() == 0) return Invalid("schedule.raptr.stages is required (at least one)");
  RETURN_IF_ERROR(CheckStageCount(r.stages_size(), "schedule.raptr.stages"));
  const int32_t min_length = std::max<int32_t>(1, r.fixed_layers_size());
  for (int i = 0; i < r.stages_size(); ++i) {
    const std::string path = absl::StrCat("schedule.raptr.stages[", i, "].path_length");
    RETURN_IF_ERROR(Required(r.stages(i).has_path_length(), path));
    const int32_t length = r.stages(i).path_length();
    if (length > num_layers) {
      return Invalid(path, " (", length, ") must be <= model.layers (", num_layers, ")");
    }
    if (length < min_length) {
      return Invalid(path, " (", length, ") must be >= ", min_length,
                     r.fixed_layers_size() > 0 ? " (the number of fixed layers)" : "");
    }
  }
  RETURN_IF_ERROR(
      CheckDurations(r.stages(), "schedule.raptr.stages", steps - r.full_warmup_steps(),
                     absl::StrCat("training.steps ", steps, " - schedule.raptr.full_warmup_steps ",
                                  r.full_warmup_steps())));
  RETURN_IF_ERROR(CheckEnum("schedule.raptr.sampling", r.sampling(), v1::PathSampling_IsValid,
                            v1::PathSampling_descriptor()));
  RETURN_IF_ERROR(CheckEnum("schedule.raptr.scaling", r.scaling(), v1::OutputScaling_IsValid,
                            v1::OutputScaling_descriptor()));
  return absl::OkStatus();
}

absl::Status CheckStacking(const v1::JobSpec& spec) {
  const v1::StackingSchedule& s = spec.schedule().stacking();
  const int32_t num_layers = spec.model().layers();
  const int64_t steps = spec.training().steps();
  if (s.stages_size() == 0) return Invalid("schedule.stacking.stages is required (at least one)");
  RETURN_IF_ERROR(CheckStageCount(s.stages_size(), "schedule.stacking.stages"));
  for (int i = 0; i < s.stages_size(); ++i) {
    const std::string path = absl::StrCat("schedule.stacking.stages[", i, "].layers");
    RETURN_IF_ERROR(Required(s.stages(i).has_layers(), path));
    const int32_t layers = s.stages(i).layers();
    if (layers < 1 || layers > num_layers) {
      return Invalid(path, " (", layers, ") must be in [1, model.layers] = [1, ", num_layers, "]");
    }
    if (i > 0 && layers <= s.stages(i - 1).layers()) {
      return Invalid(path, " (", layers, ") must be more than schedule.stacking.stages[", i - 1,
                     "].layers (", s.stages(i - 1).layers(), "): the stack only grows");
    }
  }
  const int32_t last = s.stages(s.stages_size() - 1).layers();
  if (last != num_layers) {
    return Invalid("schedule.stacking.stages[", s.stages_size() - 1, "].layers (", last,
                   ") must be model.layers (", num_layers,
                   "): the last stage trains the whole model");
  }
  return CheckDurations(s.stages(), "schedule.stacking.stages", steps,
                        absl::StrCat("training.steps ", steps));
}

absl::Status CheckSchedule(const v1::JobSpec& spec) {
  const v1::ScheduleSpec& s = spec.schedule();
  switch (s.kind_case()) {
    case v1::ScheduleSpec::KIND_NOT_SET:
      return Invalid("schedule is required: one of full, raptr, pld, layerdrop, stacking");
    case v1::ScheduleSpec::kFull:
      return absl::OkStatus();
    case v1::ScheduleSpec::kRaptr:
      return CheckRaptr(spec);
    case v1::ScheduleSpec::kPld:
      RETURN_IF_ERROR(Required(s.pld().has_theta_bar(), "schedule.pld.theta_bar"));
      RETURN_IF_ERROR(InRange("schedule.pld.theta_bar", s.pld().theta_bar(), 0, false, 1, true));
      if (s.pld().has_gamma() && s.pld().has_mean_keep()) {
        return Invalid("schedule.pld.gamma and schedule.pld.mean_keep are both set; give one");
      }
      RETURN_IF_ERROR(CheckEnum("schedule.pld.indexing", s.pld().indexing(), v1::PldIndexing_IsValid,
                                v1::PldIndexing_descriptor()));
      if (s.pld().has_mean_keep()) {
        RETURN_IF_ERROR(
            InRange("schedule.pld.mean_keep", s.pld().mean_keep(), 0, false, 1, true));
        // Reachable for this job's length and theta_bar: the gamma solves now, not at the start.
        if (spec.model().layers() < 1 || spec.training().steps() < 1) return absl::OkStatus();
        PathScheduleConfig pld;
        pld.kind = PathScheduleConfig::Kind::kPld;
        pld.pld_theta_bar = s.pld().theta_bar();
        pld.pld_indexing = s.pld().indexing() == v1::PLD_INDEXING_DEEPSPEED
                               ? PldIndexing::kDeepSpeed
                               : PldIndexing::kPaper;
        return PldGammaForMeanKeep(pld, spec.model().layers(), spec.training().steps(),
                                   s.pld().mean_keep())
            .status();
      }
      RETURN_IF_ERROR(Required(s.pld().has_gamma(), "schedule.pld.gamma"));
      RETURN_IF_ERROR(CheckFinite("schedule.pld.gamma", s.pld().gamma()));
      if (!(s.pld().gamma() >= 0)) {
        return Invalid("schedule.pld.gamma must be >= 0, got ", s.pld().gamma());
      }
      return absl::OkStatus();
    case v1::ScheduleSpec::kLayerdrop:
      RETURN_IF_ERROR(Required(s.layerdrop().has_keep_prob(), "schedule.layerdrop.keep_prob"));
      RETURN_IF_ERROR(
          InRange("schedule.layerdrop.keep_prob", s.layerdrop().keep_prob(), 0, false, 1, true));
      for (int i = 0; i < s.layerdrop().fixed_layers_size(); ++i) {
        const int32_t layer = s.layerdrop().fixed_layers(i);
        if (layer < 0 || layer >= spec.model().layers()) {
          return Invalid("schedule.layerdrop.fixed_layers[", i, "] (", layer,
                         ") must be in [0, model.layers = ", spec.model().layers(), ")");
        }
        for (int j = 0; j < i; ++j) {
          if (s.layerdrop().fixed_layers(j) == layer) {
            return Invalid("schedule.layerdrop.fixed_layers[", i, "] (", layer,
                           ") is listed twice");
          }
        }
      }
      return CheckEnum("schedule.layerdrop.scale", s.layerdrop().scale(), v1::OutputScaling_IsValid,
                       v1::OutputScaling_descriptor());
    case v1::ScheduleSpec::kStacking:
      return CheckStacking(spec);
  }
  return Invalid("schedule: unknown kind ", static_cast<int>(s.kind_case()));
}

absl::Status CheckResources(const v1::JobSpec& spec) {
  const v1::ResourceSpec& r = spec.resources();
  RETURN_IF_ERROR(Required(r.has_min_workers(), "resources.min_workers"));
  RETURN_IF_ERROR(AtLeast("resources.min_workers", r.min_workers(), 1));
  RETURN_IF_ERROR(Required(r.has_max_workers(), "resources.max_workers"));
  if (r.max_workers() < r.min_workers()) {
    return Invalid("resources.max_workers (", r.max_workers(),
                   ") must be >= resources.min_workers (", r.min_workers(), ")");
  }
  RETURN_IF_ERROR(Required(r.has_priority(), "resources.priority"));
  if (r.priority() < -1000 || r.priority() > 1000) {
    return Invalid("resources.priority must be in [-1000, 1000], got ", r.priority());
  }
  RETURN_IF_ERROR(
      CheckEnum("resources.backend", r.backend(), v1::Backend_IsValid, v1::Backend_descriptor()));
  RETURN_IF_ERROR(CheckEnum("resources.attention", r.attention(), v1::Attention_IsValid,
                            v1::Attention_descriptor()));
  // Some worker count in [min_workers, max_workers] must divide the batch (>= 1: CheckTraining).
  // Divisors pair up as (d, batch / d), so d up to sqrt(batch) finds them all: trying every
  // worker count took seconds for a prime batch near INT32_MAX.
  const int32_t batch = spec.training().batch();
  const auto allowed = [&r](int32_t workers) {
    return workers >= r.min_workers() && workers <= r.max_workers();
  };
  for (int32_t d = 1; d <= batch / d; ++d) {
    if (batch % d == 0 && (allowed(d) || allowed(batch / d))) return absl::OkStatus();
  }
  return Invalid("training.batch (", batch,
                 ") must be divisible by a worker count in [resources.min_workers, "
                 "resources.max_workers] = [",
                 r.min_workers(), ", ", r.max_workers(), "]: ranks split the batch evenly");
}

// Counts the documents of a YAML stream. yaml-cpp 0.7's parser can stop consuming input: on a
// stray ',' where a document's node should start (the stream `,`), every HandleNextDocument
// returns another empty document from the same place, so YAML::LoadAll loops forever, holding
// more nodes each time. A document that starts where the previous one did is that case.
class DocumentCounter : public YAML::EventHandler {
 public:
  int count() const { return count_; }
  bool stuck() const { return stuck_; }
  // Where the latest document starts.
  const YAML::Mark& start() const { return start_; }

  void OnDocumentStart(const YAML::Mark& mark) override {
    if (count_ > 0 && mark.pos == start_.pos) stuck_ = true;
    start_ = mark;
    ++count_;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  int count_ = 0;
  bool stuck_ = false;
  YAML::Mark start_ = YAML::Mark::null_mark();
};

}  // namespace

absl::Status YamlToProto(std::string_view yaml, google::protobuf::Message* message) {
  try {
    // Documents are counted with a parser we can stop: YAML::LoadAll never returns on some
    // malformed streams (see DocumentCounter).
    std::istringstream stream{std::string(yaml)};
    YAML::Parser parser(stream);
    DocumentCounter counter;
    while (parser.HandleNextDocument(counter)) {
      if (counter.stuck()) {
        return Invalid("job spec: yaml-cpp: error at line ", counter.start().line + 1, ", column ",
                       counter.start().column + 1, ": unexpected character");
      }
    }
    if (counter.count() == 0) return Invalid("job spec: empty document");
    if (counter.count() > 1) {
      return Invalid("job spec: expected one YAML document, got ", counter.count());
    }
    const YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap())
      return Expected("", root,
                      absl::StrCat("a map of ", message->GetDescriptor()->name(), " fields"));
    return ParseMessage(root, "", message);
  } catch (const YAML::Exception& e) {
    return Invalid("job spec: ", e.what());
  }
}

std::string ProtoToYaml(const google::protobuf::Message& message) {
  YAML::Emitter out;
  out.SetIndent(2);
  EmitMessage(out, message);
  return absl::StrCat(out.c_str(), "\n");
}

absl::StatusOr<v1::JobSpec> ParseJobSpecYaml(std::string_view yaml) {
  v1::JobSpec spec;
  RETURN_IF_ERROR(YamlToProto(yaml, &spec));
  ApplyJobSpecDefaults(&spec);
  return spec;
}

void ApplyJobSpecDefaults(v1::JobSpec* spec) {
  v1::TrainingSpec* t = spec->mutable_training();
  if (!t->has_batch()) t->set_batch(8);
  if (!t->has_seq()) t->set_seq(64);
  if (!t->has_micro_batches()) t->set_micro_batches(1);
  if (!t->has_seed()) t->set_seed(1);
  if (!t->has_eval_every()) t->set_eval_every(100);
  if (!t->has_eval_batches()) t->set_eval_batches(8);
  if (!t->has_checkpoint_every()) t->set_checkpoint_every(100);

  v1::ModelSpec* m = spec->mutable_model();
  if (m->kind() == v1::MODEL_KIND_UNSPECIFIED) m->set_kind(v1::MODEL_KIND_GPT);
  if (!m->has_d_ff() && m->has_d_model() && m->d_model() >= 1 &&
      m->d_model() <= std::numeric_limits<int32_t>::max() / 4) {
    m->set_d_ff(4 * m->d_model());
  }
  if (!m->has_max_seq()) m->set_max_seq(t->seq());

  v1::OptimizerSpec* o = spec->mutable_optimizer();
  if (!o->has_lr()) o->set_lr(1e-3);
  if (!o->has_min_lr_ratio()) o->set_min_lr_ratio(0.1);
  if (!o->has_warmup_steps() && t->has_steps()) {
    o->set_warmup_steps(std::clamp<int64_t>(t->steps() / 10, 0, 100));
  }
  if (o->decay() == v1::LR_DECAY_UNSPECIFIED) o->set_decay(v1::LR_DECAY_COSINE);
  if (!o->has_beta1()) o->set_beta1(0.9);
  if (!o->has_beta2()) o->set_beta2(0.95);
  if (!o->has_eps()) o->set_eps(1e-8);
  if (!o->has_weight_decay()) o->set_weight_decay(0.1);
  if (!o->has_grad_clip()) o->set_grad_clip(1.0);
  if (o->skipped() == v1::SKIPPED_LAYER_POLICY_UNSPECIFIED) {
    o->set_skipped(v1::SKIPPED_LAYER_POLICY_ZERO_GRAD);
  }

  v1::ScheduleSpec* s = spec->mutable_schedule();
  switch (s->kind_case()) {
    case v1::ScheduleSpec::KIND_NOT_SET:
    case v1::ScheduleSpec::kRaptr:
      ApplyRaptrDefaults(*m, s->mutable_raptr());
      break;
    case v1::ScheduleSpec::kFull:
      break;
    case v1::ScheduleSpec::kPld:
      if (!s->pld().has_theta_bar()) s->mutable_pld()->set_theta_bar(0.5);
      if (!s->pld().has_gamma() && !s->pld().has_mean_keep()) s->mutable_pld()->set_gamma(0.001);
      if (s->pld().indexing() == v1::PLD_INDEXING_UNSPECIFIED) {
        s->mutable_pld()->set_indexing(v1::PLD_INDEXING_PAPER);
      }
      break;
    case v1::ScheduleSpec::kLayerdrop:
      if (!s->layerdrop().has_keep_prob()) s->mutable_layerdrop()->set_keep_prob(0.75);
      if (s->layerdrop().scale() == v1::OUTPUT_SCALING_UNSPECIFIED) {
        s->mutable_layerdrop()->set_scale(v1::OUTPUT_SCALING_NONE);
      }
      break;
    case v1::ScheduleSpec::kStacking:
      ApplyStackingDefaults(*m, s->mutable_stacking());
      break;
  }

  v1::ResourceSpec* r = spec->mutable_resources();
  if (!r->has_min_workers()) r->set_min_workers(1);
  if (!r->has_max_workers()) r->set_max_workers(r->min_workers());
  if (!r->has_priority()) r->set_priority(0);
  if (r->backend() == v1::BACKEND_UNSPECIFIED) r->set_backend(v1::BACKEND_CPU);
  if (r->attention() == v1::ATTENTION_UNSPECIFIED) r->set_attention(v1::ATTENTION_AUTO);
}

absl::Status ValidateJobSpec(const v1::JobSpec& spec) {
  RETURN_IF_ERROR(CheckName(spec));
  // Training first: model.max_seq and the optimizer's and schedule's bounds refer to it.
  RETURN_IF_ERROR(CheckTraining(spec));
  RETURN_IF_ERROR(CheckModel(spec));
  RETURN_IF_ERROR(CheckData(spec));
  RETURN_IF_ERROR(CheckOptimizer(spec));
  RETURN_IF_ERROR(CheckSchedule(spec));
  RETURN_IF_ERROR(CheckResources(spec));
  return absl::OkStatus();
}

std::string JobSpecToYaml(const v1::JobSpec& spec) { return ProtoToYaml(spec); }

std::string MethodName(const v1::JobSpec& spec) {
  switch (spec.schedule().kind_case()) {
    case v1::ScheduleSpec::kFull:
      return "full";
    case v1::ScheduleSpec::kPld:
      return "pld";
    case v1::ScheduleSpec::kLayerdrop:
      return "layerdrop";
    case v1::ScheduleSpec::kStacking:
      return "stacking";
    default:
      return "raptr";
  }
}

int64_t JobParameterCount(const v1::JobSpec& spec) {
  const v1::ModelSpec& m = spec.model();
  const int64_t L = m.layers(), C = m.d_model(), F = m.d_ff(), V = m.vocab_size(), P = m.max_seq();
  // Per block: ln_1 and ln_2 (2C each), qkv (3C x C + 3C), attention projection (C x C + C), MLP
  // fc (F x C + F) and projection (C x F + C).
  const int64_t per_block = 4 * C * C + 2 * F * C + 9 * C + F;
  return V * C + P * C + L * per_block + 2 * C;  // wte, wpe, the blocks, ln_f
}

int64_t JobMinimumMemoryBytes(const v1::JobSpec& spec) {
  // fp32 parameters, gradients and AdamW's m and v.
  return 16 * JobParameterCount(spec);
}

std::vector<int64_t> RaptrStageSteps(const v1::JobSpec& spec) {
  if (!spec.schedule().has_raptr()) return {};
  const v1::RaptrSchedule& r = spec.schedule().raptr();
  return StageSteps(r.stages(), spec.training().steps() - r.full_warmup_steps());
}

std::vector<int64_t> StackingStageSteps(const v1::JobSpec& spec) {
  if (!spec.schedule().has_stacking()) return {};
  return StageSteps(spec.schedule().stacking().stages(), spec.training().steps());
}

}  // namespace raptr
