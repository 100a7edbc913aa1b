#include "core/keys.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include "test_util.h"

namespace hanse {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

TEST(Keys, GeneratesDistinctValidPairs) {
  auto a = GenerateKeyPair();
  auto b = GenerateKeyPair();
  ASSERT_OK(a.status());
  ASSERT_OK(b.status());
  EXPECT_TRUE(IsValidZ85Key(a->public_key));
  EXPECT_TRUE(IsValidZ85Key(a->secret_key));
  EXPECT_NE(a->secret_key, b->secret_key);
  auto pub = PublicKeyOf(a->secret_key);
  ASSERT_OK(pub.status());
  EXPECT_EQ(*pub, a->public_key);
}

TEST(Keys, WriteThenLoadRoundTrips) {
  TempDir dir;
  auto kp = WriteKeyPair("paris", dir / "keys");
  ASSERT_OK(kp.status());
  struct stat st {};
  ASSERT_EQ(stat((dir / "keys/paris.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ReadFile(dir / "keys/paris.pub"), kp->public_key + "\n");
  auto sec = LoadSecretKey(dir / "keys/paris.key");
  ASSERT_OK(sec.status());
  EXPECT_EQ(*sec, kp->secret_key);
  auto pub = LoadPublicKey(dir / "keys/paris.pub");
  ASSERT_OK(pub.status());
  EXPECT_EQ(*pub, kp->public_key);
}

TEST(Keys, NeverOverwritesAnExistingKey) {
  TempDir dir;
  auto first = WriteKeyPair("lyon", dir.path());
  ASSERT_OK(first.status());
  auto second = WriteKeyPair("lyon", dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kAlreadyExists);
  EXPECT_NE(second.status().message().find("lyon.key"), std::string::npos) << second.status().ToString();
  EXPECT_EQ(*LoadSecretKey(dir / "lyon.key"), first->secret_key);
}

TEST(Keys, RefusesWhenOnlyThePublicFileExists) {
  TempDir dir;
  WriteFile(dir / "berlin.pub", "x\n");
  auto r = WriteKeyPair("berlin", dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kAlreadyExists);
  EXPECT_FALSE(std::filesystem::exists(dir / "berlin.key"));
}

TEST(Keys, RefusesSecretKeyReadableByOthers) {
  TempDir dir;
  ASSERT_OK(WriteKeyPair("site", dir.path()).status());
  const auto file = dir / "site.key";
  ASSERT_EQ(chmod(file.c_str(), 0644), 0);
  auto r = LoadSecretKey(file);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_EQ(r.status().message(), "secret key file " + file.string() +
                                      " is accessible by others (mode 0644); run chmod 600 " + file.string());
  ASSERT_EQ(chmod(file.c_str(), 0640), 0);
  EXPECT_EQ(LoadSecretKey(file).status().code(), Code::kPermissionDenied);
  ASSERT_EQ(chmod(file.c_str(), 0400), 0);
  EXPECT_OK(LoadSecretKey(file).status());
}

TEST(Keys, MissingFilesAreNotFoundAndNamed) {
  TempDir dir;
  auto s = LoadSecretKey(dir / "none.key");
  EXPECT_EQ(s.status().code(), Code::kNotFound);
  EXPECT_NE(s.status().message().find("none.key"), std::string::npos);
  auto p = LoadPublicKey(dir / "none.pub");
  EXPECT_EQ(p.status().code(), Code::kNotFound);
  EXPECT_NE(p.status().message().find("none.pub"), std::string::npos);
}

TEST(Keys, AcceptsCommentsAndWhitespace) {
  TempDir dir;
  auto kp = GenerateKeyPair();
  ASSERT_OK(kp.status());
  WriteFile(dir / "a.pub", "# coordinator\n\n  " + kp->public_key + "  \r\n");
  auto r = LoadPublicKey(dir / "a.pub");
  ASSERT_OK(r.status());
  EXPECT_EQ(*r, kp->public_key);
}

class MalformedKey : public ::testing::TestWithParam<std::string> {};

TEST_P(MalformedKey, IsRefusedNamingTheFile) {
  TempDir dir;
  const auto file = dir / "bad.pub";
  WriteFile(file, GetParam());
  auto r = LoadPublicKey(file);
  ASSERT_FALSE(r.ok()) << "accepted: " << GetParam();
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find(file.string()), std::string::npos) << r.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Keys, MalformedKey,
    ::testing::Values(std::string(""), std::string("# only a comment\n"),
                      std::string("short\n"),
                      std::string(39, 'a') + "\n",                          // one short
                      std::string(41, 'a') + "\n",                          // one long
                      std::string(39, 'a') + "\"\n",                        // not in the alphabet
                      std::string(39, 'a') + " \n" + std::string(40, 'a'),  // two key lines
                      std::string(40, '#') + "x",                           // comment + garbage line
                      std::string(5, '%') + std::string(35, '0') + "\n"));  // group overflows 2^32

TEST(Keys, IsValidZ85Key) {
  EXPECT_TRUE(IsValidZ85Key(std::string(40, '0')));
  EXPECT_FALSE(IsValidZ85Key(std::string(40, ' ')));
  EXPECT_FALSE(IsValidZ85Key("#####" + std::string(35, '0')));
  EXPECT_FALSE(PublicKeyOf("nope").ok());
}

TEST(Keys, ReportsAFolderThatCannotBeCreated) {
  TempDir dir;
  WriteFile(dir / "file", "x");
  auto r = WriteKeyPair("k", dir / "file/sub");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo);
  EXPECT_NE(r.status().message().find((dir / "file/sub").string()), std::string::npos) << r.status().ToString();
}

TEST(Keys, RejectsBadKeyNames) {
  TempDir dir;
  EXPECT_EQ(WriteKeyPair("", dir.path()).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(WriteKeyPair("a/b", dir.path()).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace hanse
