"""The passwords people pick most, refused for GridPilot accounts (NIST SP 800-63B 5.1.1.2:
check against "passwords obtained from previous breach corpuses" and "dictionary words").

Written down here from the well-known top-of-the-list entries of public breach statistics
(the same few hundred head every published top-10,000 list), lower case, shipped with the
package: nothing is downloaded. ``users.check_password`` also compares what remains after
lower-casing, undoing digit-for-letter swaps and dropping digits and symbols, so
"P@ssw0rd2024!" counts as "password".
"""

from __future__ import annotations

_LIST = """
123456 123456789 12345678 12345 1234567 1234567890 123123 111111 000000 654321 666666 121212
112233 123321 7777777 555555 987654321 159753 123654 147258369 11111111 00000000 1q2w3e4r
1q2w3e4r5t 1qaz2wsx 1q2w3e 1qazxsw2 zaq12wsx zaq1zaq1 qazwsx qazwsxedc qwerty qwerty123
qwertyuiop qwertyui qwerty1 qwert asdfgh asdfghjkl asdf zxcvbnm zxcvbn azerty azertyuiop
password password1 password12 password123 passw0rd pass pass123 passpass passwort motdepasse
contrasena contraseña senha parola salasana wachtwoord haslo heslo jelszo admin admin123
administrator root toor letmein letmeinnow welcome welcome1 welcome123 login logmein guest
default changeme changeit secret secret123 master superuser super user test test123 testing
tester demo sample temp temporary trustno1 iloveyou iloveu loveyou lovely love abc123 abcdef
abcabc abcd1234 aaaaaa a1b2c3 a1b2c3d4 1a2b3c abc123456 monkey dragon shadow sunshine
princess football baseball basketball soccer hockey superman batman spiderman starwars
pokemon pikachu naruto matrix mustang ferrari porsche mercedes corvette harley michael
jennifer jordan jordan23 michelle daniel jessica ashley charlie thomas robert william
richard joshua andrew anthony hunter ranger buster tigger ginger pepper maggie bailey
cookie chocolate cheese banana orange apple summer winter spring autumn freedom whatever
nothing computer internet google hello hello123 hellohello killer hottie flower family
friends forever heaven angel angels blessed jesus christ god lucky lucky7 fuckyou fuckoff
asshole biteme qwe123 qweasd qweasdzxc 1234qwer q1w2e3r4 q1w2e3r4t5 zxcvbnm123 asd123
samsung nokia apple123 iphone android windows linux ubuntu oracle mysql postgres
database server network system sysadmin operator viewer control scada dms ems grid
gridpilot power energy electric voltage station substation utility engineer manager
office company business money dollar million bitcoin crypto secure security private
access accessdenied open opensesame sesame master123 pass1234 password1234 mypassword
yourpassword newpassword oldpassword nopassword blank empty nothing123 qwerty12345
123qwe 123abc 123456a 123456q a123456 aa123456 abc12345 password! p@ssword passw0rd!
baseball1 football1 princess1 monkey1 dragon1 shadow1 sunshine1 superman1 michael1
letmein1 trustno1! iloveyou1 iloveyou2 charlie1 jordan1 killer1 hunter1 ranger1 buster1
summer2023 summer2024 winter2023 winter2024 spring2024 autumn2024 january february march
april may june july august september october november december monday tuesday wednesday
thursday friday saturday sunday
"""
COMMON = frozenset(_LIST.split())
