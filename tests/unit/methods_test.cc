// common/methods: the methods table names every schedule of the proto with its message, and
// every field of each schedule message, nothing more; the skipped-block policies are the enum's.
#include "common/methods.h"

#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "gtest/gtest.h"
#include "raptr/v1/job.pb.h"

namespace raptr {
namespace {

namespace pb = google::protobuf;

TEST(Methods, EveryScheduleAndEveryOptionOfTheProtoIsDescribed) {
  const pb::Descriptor* schedule = v1::ScheduleSpec::descriptor();
  std::set<std::string> described;
  for (const Method& m : Methods()) {
    described.insert(m.name);
    const pb::FieldDescriptor* field = schedule->FindFieldByName(m.name);
    ASSERT_NE(field, nullptr) << m.name << " is not a ScheduleSpec field";
    ASSERT_EQ(field->message_type()->full_name(), m.message) << m.name;
    std::set<std::string> want, got;
    for (int i = 0; i < field->message_type()->field_count(); ++i) {
      want.insert(field->message_type()->field(i)->name());
    }
    for (const MethodOption& o : m.options) {
      EXPECT_TRUE(got.insert(o.name).second) << m.name << "." << o.name << " twice";
      EXPECT_FALSE(o.meaning.empty()) << m.name << "." << o.name;
      EXPECT_FALSE(o.default_value.empty()) << m.name << "." << o.name;
    }
    EXPECT_EQ(got, want) << m.name << ": the options described are not the message's fields";
    EXPECT_FALSE(m.summary.empty()) << m.name;
  }
  std::set<std::string> all;
  for (int i = 0; i < schedule->field_count(); ++i) all.insert(schedule->field(i)->name());
  EXPECT_EQ(described, all) << "a schedule kind is not described";
}

TEST(Methods, SkippedPoliciesAreTheEnumsValues) {
  std::set<std::string> want, got;
  const pb::EnumDescriptor* e = v1::SkippedLayerPolicy_descriptor();
  for (int i = 0; i < e->value_count(); ++i) {
    if (e->value(i)->number() == 0) continue;
    want.insert(absl::AsciiStrToLower(e->value(i)->name().substr(std::string("SKIPPED_LAYER_POLICY_").size())));
  }
  for (const MethodOption& o : SkippedBlockPolicies()) got.insert(o.name);
  EXPECT_EQ(got, want);
  EXPECT_EQ(SkippedBlockPolicies().front().name, "zero_grad");  // the default, listed first
}

TEST(Methods, MarkdownHasASectionPerMethod) {
  const std::string md = MethodsMarkdown();
  for (const Method& m : Methods()) {
    EXPECT_NE(md.find("## `" + m.name + "`"), std::string::npos) << m.name;
    for (const MethodOption& o : m.options) {
      EXPECT_NE(md.find("| `" + o.name + "` |"), std::string::npos) << m.name << "." << o.name;
    }
  }
}

}  // namespace
}  // namespace raptr
